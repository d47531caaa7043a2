//! Checks over a conversation's step graph: every no-event thread reachable,
//! no GoTo loop that could run without passing a wait, and the seeds' X-1 rule.

use toml::Spanned;

use super::diagnostic::{Diagnostic, Severity, Source};
use super::expected_offset;
use super::raw::RawThread;
use crate::domain::definition::{Conversation, StepIdx, StepKind};
use crate::domain::time::Duration;

/// Where control can go right after step `s` runs (a wait's successor counts:
/// time passes, but the entry does get there).
fn successors(c: &Conversation, s: StepIdx) -> Vec<StepIdx> {
    let next = c.next_in_thread(s);
    match &c.steps[s as usize].kind {
        StepKind::Goto {
            target,
            filter: None,
        } => vec![*target],
        StepKind::Goto {
            target,
            filter: Some(_),
        } => std::iter::once(*target).chain(next).collect(),
        StepKind::Split { branches } => branches.iter().map(|b| b.target).collect(),
        _ => next.into_iter().collect(),
    }
}

fn is_timed_wait(c: &Conversation, s: StepIdx) -> bool {
    matches!(c.steps[s as usize].kind, StepKind::Wait(d) if d.0 > 0)
        || matches!(c.steps[s as usize].kind, StepKind::CadenceWait(_))
}

pub(super) fn check(
    src: &Source<'_>,
    c: &Conversation,
    threads: &[Spanned<RawThread>],
    step_at: &[(usize, usize)],
    diags: &mut Vec<Diagnostic>,
) {
    let n = c.steps.len();
    let step_span = |s: StepIdx| {
        let (ti, si) = step_at[s as usize];
        (
            threads[ti].get_ref().step[si].span(),
            format!("thread[{ti}].step[{si}]"),
        )
    };

    // Reachability from the triggered threads.
    let mut reached = vec![false; n];
    let mut stack: Vec<StepIdx> = c
        .threads
        .iter()
        .filter(|t| !t.events.is_empty() && t.first_step < t.end_step)
        .map(|t| t.first_step)
        .collect();
    while let Some(s) = stack.pop() {
        if std::mem::replace(&mut reached[s as usize], true) {
            continue;
        }
        stack.extend(
            successors(c, s)
                .into_iter()
                .filter(|x| !reached[*x as usize]),
        );
    }
    if c.threads.iter().all(|t| t.events.is_empty()) {
        diags.push(src.diag(
            Severity::Error,
            None,
            "thread",
            "no thread has a trigger event: no contact can ever enter",
        ));
    }
    for (ti, t) in c.threads.iter().enumerate() {
        let steps = t.first_step..t.end_step;
        if t.events.is_empty() && !steps.clone().any(|s| reached[s as usize]) {
            diags.push(src.diag(
                Severity::Error,
                Some(threads[ti].get_ref().name.span()),
                format!("thread[{ti}]"),
                format!("thread {:?} has No Events Required and no GoTo from a triggered thread leads into it: it can never run", &*t.name),
            ));
        } else if let Some(s) = steps.clone().find(|s| !reached[*s as usize]) {
            let (span, at) = step_span(s);
            diags.push(src.diag(
                Severity::Warning,
                Some(span),
                at,
                format!("step {:?} can never be reached", &*c.steps[s as usize].id),
            ));
        }
    }

    // A cycle among steps that take no time would spin forever.
    let mut color = vec![0u8; n]; // 0 new, 1 on the path, 2 done
    for start in 0..n as StepIdx {
        if color[start as usize] != 0 || is_timed_wait(c, start) {
            continue;
        }
        let mut path: Vec<(StepIdx, Vec<StepIdx>)> = vec![(start, successors(c, start))];
        color[start as usize] = 1;
        while let Some((s, succ)) = path.last_mut() {
            let s = *s;
            match succ.pop() {
                Some(x) if is_timed_wait(c, x) => {}
                Some(x) if color[x as usize] == 1 => {
                    let (span, at) = step_span(s);
                    let ids: Vec<&str> = path
                        .iter()
                        .skip_while(|(p, _)| *p != x)
                        .map(|(p, _)| &*c.steps[*p as usize].id)
                        .collect();
                    diags.push(src.diag(
                        Severity::Error,
                        Some(span),
                        at,
                        format!(
                            "GoTo loop with no wait in it ({} → {}): it would run forever",
                            ids.join(" → "),
                            &*c.steps[x as usize].id
                        ),
                    ));
                }
                Some(x) if color[x as usize] == 0 => {
                    color[x as usize] = 1;
                    path.push((x, successors(c, x)));
                }
                Some(_) => {}
                None => {
                    color[s as usize] = 2;
                    path.pop();
                }
            }
        }
    }

    // a last-order filter right after a wait of X checks X minus one day.
    for (si, step) in c.steps.iter().enumerate() {
        let StepKind::Goto {
            filter: Some(f), ..
        } = &step.kind
        else {
            continue;
        };
        let Some(offset) = f.last_order_before else {
            continue;
        };
        let t = &c.threads[step.thread as usize];
        let wait = (t.first_step..si as StepIdx)
            .rev()
            .find_map(|p| match c.steps[p as usize].kind {
                StepKind::Wait(d) if d.0 > 0 => Some(Some(d)),
                // Its length varies by contact: no X to check against.
                StepKind::CadenceWait(_) => Some(None),
                _ => None,
            })
            .flatten();
        if let Some(wait) = wait
            && offset != expected_offset(wait)
        {
            let (ti, sj) = step_at[si];
            let span = threads[ti].get_ref().step[sj]
                .get_ref()
                .filter
                .as_ref()
                .map(Spanned::span);
            diags.push(src.diag(
                Severity::Warning,
                span,
                format!("thread[{ti}].step[{sj}].filter.last_order_before"),
                format!(
                    "offset {offset} is not one day less than the wait of {wait} before it (X-1 = {}): contacts may be sent to or skipped around the day boundary",
                    show(expected_offset(wait))
                ),
            ));
        }
    }
}

fn show(d: Duration) -> String {
    if d.0 < 0 {
        format!("-{}", Duration(-d.0))
    } else {
        d.to_string()
    }
}
