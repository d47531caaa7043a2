//! The conversation page's data (`GET /api/flow`): each conversation's threads
//! and steps as the definitions give them, with the entries now at each step
//! (a scan of the store's contacts) and the step activity of the last day and
//! week (the store's hourly counters, [`crate::store::activity`]).
//!
//! "The last day" of a partition is the hour its clock is in and the 23
//! before it; "the last week", that hour and the 167 before it. Event time,
//! like everything else: a partition catching up on history shows the
//! activity of its history's last week.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::domain::Timestamp;
use crate::domain::definition::{
    ConvIdx, Conversation, Definitions, EntryPolicy, Filter, ProfileTest, StepIdx, StepKind,
    ThreadIdx,
};
use crate::store::activity::{Activity, HOUR_MS, TRIGGER};
use crate::store::rocks::{Store, StoreError, conversation_key};

const DAY_HOURS: i64 = 24;
const WEEK_HOURS: i64 = 7 * 24;

/// Per step (or trigger), the activity of the last day and of the last week.
type Windows = BTreeMap<(ConvIdx, ThreadIdx, StepIdx), [[u64; 4]; 2]>;

/// What the store holds for the page, summed over `partitions`.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Entries at each step now.
    pub at_step: BTreeMap<(ConvIdx, StepIdx), u64>,
    /// `[day, week]`, each indexed by [`Activity`] as `u8`.
    pub windows: Windows,
    /// Each partition and its clock.
    pub clocks: Vec<(u32, Option<Timestamp>)>,
}

/// Reads the counts of `partitions` from the store.
pub fn counts(store: &Store, defs: &Definitions, partitions: &[u32]) -> Result<Counts, StoreError> {
    let mut out = Counts::default();
    let keys: Vec<u64> = defs
        .conversations
        .iter()
        .map(|c| conversation_key(&c.name))
        .collect();
    for &p in partitions {
        for (k, n) in store.entries_at_steps(defs, p)? {
            *out.at_step.entry(k).or_default() += n;
        }
        let clock = store.clock(p)?;
        out.clocks.push((p, clock));
        let Some(clock) = clock else { continue };
        let hour = clock.0.div_euclid(HOUR_MS) * HOUR_MS;
        let day_from = hour.saturating_sub((DAY_HOURS - 1) * HOUR_MS);
        let week_from = hour.saturating_sub((WEEK_HOURS - 1) * HOUR_MS);
        for (k, n) in store.activity(p, Timestamp(week_from))? {
            // Counters of a conversation, thread or step the definitions no
            // longer have are not shown.
            let Some(conv) = keys.iter().position(|&c| c == k.conversation) else {
                continue;
            };
            let def = &defs.conversations[conv];
            let known = (k.thread as usize) < def.threads.len()
                && (k.step == TRIGGER || (k.step as usize) < def.steps.len());
            if !known {
                continue;
            }
            let w = out
                .windows
                .entry((conv as ConvIdx, k.thread, k.step))
                .or_default();
            w[1][k.kind as usize] += n;
            if k.hour >= day_from {
                w[0][k.kind as usize] += n;
            }
        }
    }
    Ok(out)
}

fn window_json(w: Option<&[[u64; 4]; 2]>, which: usize) -> Value {
    let w = w.copied().unwrap_or_default()[which];
    Value::Object(
        Activity::ALL
            .iter()
            .map(|a| (a.as_str().to_string(), json!(w[*a as usize])))
            .collect(),
    )
}

/// The page's JSON: the flow of every conversation with `counts` on it.
pub fn flow(defs: &Definitions, counts: &Counts) -> Value {
    let conversations: Vec<Value> = defs
        .conversations
        .iter()
        .enumerate()
        .map(|(ci, conv)| conversation(defs, ci as ConvIdx, conv, counts))
        .collect();
    json!({
        "partitions": counts.clocks.iter().map(|(p, c)| json!({
            "partition": p,
            "clock": c.map(|c| c.to_string()),
        })).collect::<Vec<_>>(),
        "window_hours": { "day": DAY_HOURS, "week": WEEK_HOURS },
        "conversations": conversations,
    })
}

fn conversation(defs: &Definitions, ci: ConvIdx, conv: &Conversation, counts: &Counts) -> Value {
    let entry = match conv.entry {
        EntryPolicy::Once => "once".to_string(),
        EntryPolicy::Restart => "unlimited, a new entry restarts".to_string(),
        EntryPolicy::Parallel { max } => format!("unlimited, up to {max} side by side"),
    };
    let threads: Vec<Value> = conv
        .threads
        .iter()
        .enumerate()
        .map(|(ti, th)| {
            let ti = ti as ThreadIdx;
            let trigger = counts.windows.get(&(ci, ti, TRIGGER));
            let steps: Vec<Value> = (th.first_step..th.end_step)
                .map(|si| step(defs, ci, ti, si, conv, counts))
                .collect();
            json!({
                "name": th.name.as_ref(),
                "rank": th.rank,
                "exit_events": th.exit_events,
                "trigger": {
                    "events": th.events,
                    "no_events_required": th.events.is_empty(),
                    "day": window_json(trigger, 0),
                    "week": window_json(trigger, 1),
                },
                "steps": steps,
            })
        })
        .collect();
    json!({
        "name": conv.name.as_ref(),
        "campaign": conv.campaign,
        "list": conv.list.as_deref(),
        "entry": entry,
        "exit_events": conv.exit_events,
        "threads": threads,
    })
}

fn step(
    defs: &Definitions,
    ci: ConvIdx,
    ti: ThreadIdx,
    si: StepIdx,
    conv: &Conversation,
    counts: &Counts,
) -> Value {
    let s = &conv.steps[si as usize];
    let in_window = s
        .window
        .map(|w| format!("ends {}", describe_window(&w, conv)));
    let (kind, label, detail, target) = match &s.kind {
        StepKind::Wait(d) if d.0 == 0 => ("wait", "No Wait".to_string(), in_window, None),
        StepKind::Wait(d) => ("wait", format!("Wait {d}"), in_window, None),
        StepKind::CadenceWait(c) => (
            "wait",
            "Wait for the contact's cadence".to_string(),
            Some(format!(
                "mean gap between orders x {}, {} to {}; one order: {}{}",
                c.factor,
                c.min,
                c.max,
                c.fallback,
                in_window.map_or_else(String::new, |w| format!("; {w}"))
            )),
            None,
        ),
        StepKind::Goto { target, filter } => {
            let to = conv.steps.get(*target as usize).map(|t| t.id.to_string());
            (
                "goto",
                format!("GoTo {}", to.as_deref().unwrap_or("?")),
                Some(filter.as_ref().map_or_else(
                    || "always".to_string(),
                    |f| format!("if {}", describe_filter(f)),
                )),
                to,
            )
        }
        StepKind::SetCouponCode {
            pool,
            field,
            expiration_field,
            valid_for,
            when_exhausted,
        } => {
            let pool = defs.pools.get(*pool as usize).map_or("?", |p| &p.name);
            let mut d = format!("from pool {pool} into field {field}");
            if let Some(e) = expiration_field {
                d.push_str(&format!("; expiry into {e}"));
                if let Some(v) = valid_for {
                    d.push_str(&format!(" (valid {v})"));
                }
            }
            d.push_str(&format!("; pool empty: {}", when_exhausted.as_str()));
            ("action", "Set Coupon Code".to_string(), Some(d), None)
        }
        StepKind::Split { branches } => {
            let total: u32 = branches.iter().map(|b| b.weight).sum();
            let parts: Vec<String> = branches
                .iter()
                .map(|b| {
                    let to = conv.steps.get(b.target as usize).map_or("?", |t| &*t.id);
                    format!("{} {}% -> {to}", b.name, b.weight * 100 / total.max(1))
                })
                .collect();
            ("split", "Split".to_string(), Some(parts.join(", ")), None)
        }
        StepKind::Message {
            message, window, ..
        } => (
            "message",
            format!("Message {message}"),
            window.map(|w| format!("sends {}", describe_window(&w, conv))),
            None,
        ),
    };
    let w = counts.windows.get(&(ci, ti, si));
    json!({
        "id": s.id.as_ref(),
        "kind": kind,
        "label": label,
        "detail": detail,
        "target": target,
        "now": counts.at_step.get(&(ci, si)).copied().unwrap_or(0),
        "day": window_json(w, 0),
        "week": window_json(w, 1),
    })
}

/// A send window in the marketer's words (after "sends" or "ends").
fn describe_window(w: &crate::domain::window::SendWindow, conv: &Conversation) -> String {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let days: Vec<&str> = DAYS
        .iter()
        .zip(w.days)
        .filter_map(|(d, on)| on.then_some(*d))
        .collect();
    let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
    format!(
        "{} {}-{} in the contact's {} (default {})",
        days.join(" "),
        hm(w.from_min),
        hm(w.to_min),
        conv.time_zone_field,
        conv.time_zone
    )
}

/// A segment filter in the marketer's words.
pub fn describe_filter(f: &Filter) -> String {
    let mut parts = Vec::new();
    if let Some(d) = f.last_order_before {
        parts.push(format!("Last Order Date is before an offset of {d}"));
    }
    if let Some(d) = f.last_order_after {
        parts.push(format!("Last Order Date is within the last {d}"));
    }
    if let Some(n) = f.min_orders {
        parts.push(format!("at least {n} orders"));
    }
    if let Some(n) = f.max_orders {
        parts.push(format!("at most {n} orders"));
    }
    let money = |c: i64| format!("{:.2}", c as f64 / 100.0);
    if let Some(c) = f.min_total_cents {
        parts.push(format!("order total at least {}", money(c)));
    }
    if let Some(c) = f.max_total_cents {
        parts.push(format!("order total at most {}", money(c)));
    }
    if let Some(l) = &f.subscribed_to {
        parts.push(format!("subscribed to {l}"));
    }
    for (name, test) in &f.profile {
        parts.push(match test {
            ProfileTest::Equals(v) => format!("{name} is {v:?}"),
            ProfileTest::In(vs) => format!("{name} is one of {vs:?}"),
            ProfileTest::Exists(true) => format!("{name} is set"),
            ProfileTest::Exists(false) => format!("{name} is not set"),
            ProfileTest::Between { min, max } => match (min, max) {
                (Some(lo), Some(hi)) => format!("{name} is from {lo} to {hi}"),
                (Some(lo), None) => format!("{name} is at least {lo}"),
                (None, Some(hi)) => format!("{name} is at most {hi}"),
                (None, None) => format!("{name} is a number"),
            },
        });
    }
    let mut s = if parts.is_empty() {
        "always".to_string()
    } else {
        parts.join(" and ")
    };
    if let Some(m) = &f.merchant {
        s.push_str(&format!(" (orders of merchant {m})"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Duration;
    use crate::domain::time::DAY_MS;

    #[test]
    fn a_filter_reads_as_the_seed_words_it() {
        let f = Filter {
            last_order_before: Some(Duration(89 * DAY_MS)),
            merchant: Some("m1".into()),
            ..Filter::default()
        };
        assert_eq!(
            describe_filter(&f),
            "Last Order Date is before an offset of 89d (orders of merchant m1)"
        );
        assert_eq!(describe_filter(&Filter::default()), "always");
    }
}
