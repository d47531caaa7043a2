//! One step of a thread: its keys checked against its type and compiled
//! (waits, cadences, GoTo filters, splits, coupon actions, messages).

use std::collections::{BTreeSet, HashMap};

use toml::Spanned;

use super::raw::{self, RawFilter, RawStep};
use super::{Diagnostic, Severity, Source, non_empty, parse_duration, profile, window};
use crate::domain::definition::{ExhaustedOutcome, Filter, PoolDef, PoolIdx, StepIdx, StepKind};
use crate::domain::window::SendWindow;

#[allow(clippy::too_many_arguments)]
pub(super) fn compile_step(
    src: &Source<'_>,
    ti: usize,
    si: usize,
    s: &RawStep,
    step_ids: &HashMap<String, StepIdx>,
    pools: &[PoolDef],
    pool_index: &HashMap<String, PoolIdx>,
    default_window: Option<SendWindow>,
    diags: &mut Vec<Diagnostic>,
) -> Option<(StepKind, Option<SendWindow>)> {
    let at = |f: &str| format!("thread[{ti}].step[{si}].{f}");
    let kind = s.kind.get_ref().as_str();
    let allowed: &[&str] = match kind {
        "wait" => &["duration", "cadence", "send_window"],
        "goto" => &["target", "filter"],
        "action" => &[
            "action",
            "pool",
            "field",
            "expiration_field",
            "valid_for",
            "when_exhausted",
        ],
        "message" => &["message", "send_window", "when_capped"],
        "split" => &["branches"],
        other => {
            diags.push(src.diag(
                Severity::Error,
                Some(s.kind.span()),
                at("type"),
                format!(
                    "unknown step type {other:?}: use \"wait\", \"goto\", \"split\", \"action\" or \"message\""
                ),
            ));
            return None;
        }
    };
    let present: [(&str, Option<std::ops::Range<usize>>); 14] = [
        ("duration", s.duration.as_ref().map(Spanned::span)),
        ("target", s.target.as_ref().map(Spanned::span)),
        ("filter", s.filter.as_ref().map(Spanned::span)),
        ("action", s.action.as_ref().map(Spanned::span)),
        ("pool", s.pool.as_ref().map(Spanned::span)),
        ("field", s.field.as_ref().map(Spanned::span)),
        (
            "expiration_field",
            s.expiration_field.as_ref().map(Spanned::span),
        ),
        ("valid_for", s.valid_for.as_ref().map(Spanned::span)),
        (
            "when_exhausted",
            s.when_exhausted.as_ref().map(Spanned::span),
        ),
        ("message", s.message.as_ref().map(Spanned::span)),
        ("send_window", s.send_window.as_ref().map(Spanned::span)),
        ("branches", s.branches.as_ref().map(Spanned::span)),
        ("cadence", s.cadence.as_ref().map(Spanned::span)),
        ("when_capped", s.when_capped.as_ref().map(Spanned::span)),
    ];
    let mut ok = true;
    for (f, span) in present {
        if let Some(span) = span
            && !allowed.contains(&f)
        {
            diags.push(src.diag(
                Severity::Error,
                Some(span),
                at(f),
                format!("`{f}` does not apply to a {kind} step"),
            ));
            ok = false;
        }
    }
    let missing = |f: &str, diags: &mut Vec<Diagnostic>| {
        diags.push(src.diag(
            Severity::Error,
            Some(s.id.span()),
            at(f),
            format!("a {kind} step needs `{f}`"),
        ));
    };
    let kind = match kind {
        "wait" => match (&s.duration, &s.cadence) {
            (Some(d), None) => StepKind::Wait(parse_duration(src, d, at("duration"), diags)?),
            (None, Some(c)) => {
                StepKind::CadenceWait(compile_cadence(src, &at("cadence"), c, diags)?)
            }
            (Some(_), Some(c)) => {
                diags.push(src.diag(
                    Severity::Error,
                    Some(c.span()),
                    at("cadence"),
                    "a wait has a fixed `duration` or a `cadence`, not both",
                ));
                return None;
            }
            (None, None) => {
                missing("duration", diags);
                return None;
            }
        },
        "goto" => {
            let filter = match &s.filter {
                Some(f) => Some(compile_filter(src, &at("filter"), f, diags)?),
                None => None,
            };
            let Some(t) = &s.target else {
                missing("target", diags);
                return None;
            };
            match step_ids.get(t.get_ref().trim()) {
                Some(&target) => StepKind::Goto { target, filter },
                None => {
                    diags.push(src.diag(
                        Severity::Error,
                        Some(t.span()),
                        at("target"),
                        format!("no step has id {:?}", t.get_ref()),
                    ));
                    return None;
                }
            }
        }
        "action" => {
            let (Some(action), Some(pool), Some(field), Some(when)) =
                (&s.action, &s.pool, &s.field, &s.when_exhausted)
            else {
                for (f, v) in [
                    ("action", s.action.is_none()),
                    ("pool", s.pool.is_none()),
                    ("field", s.field.is_none()),
                    ("when_exhausted", s.when_exhausted.is_none()),
                ] {
                    if v {
                        missing(f, diags);
                    }
                }
                return None;
            };
            if action.get_ref() != "set_coupon_code" {
                diags.push(src.diag(
                    Severity::Error,
                    Some(action.span()),
                    at("action"),
                    format!(
                        "unknown action {:?}: the supported action is \"set_coupon_code\"",
                        action.get_ref()
                    ),
                ));
                return None;
            }
            let when_exhausted = match when.get_ref().as_str() {
                "continue" => ExhaustedOutcome::Continue,
                "exit" => ExhaustedOutcome::Exit,
                other => {
                    diags.push(src.diag(
                        Severity::Error,
                        Some(when.span()),
                        at("when_exhausted"),
                        format!("unknown outcome {other:?}: use \"continue\" or \"exit\""),
                    ));
                    return None;
                }
            };
            let Some(&pool_idx) = pool_index.get(pool.get_ref().trim()) else {
                let known: Vec<&str> = pools.iter().map(|p| &*p.name).collect();
                diags.push(src.diag(
                    Severity::Error,
                    Some(pool.span()),
                    at("pool"),
                    format!(
                        "no coupon pool is named {:?} (declared: {known:?})",
                        pool.get_ref()
                    ),
                ));
                return None;
            };
            let field = non_empty(src, field, at("field"), diags)?;
            let expiration_field = match &s.expiration_field {
                Some(f) => Some(non_empty(src, f, at("expiration_field"), diags)?),
                None => None,
            };
            let valid_for = match &s.valid_for {
                Some(v) => Some(parse_duration(src, v, at("valid_for"), diags)?),
                None => None,
            };
            if let Some(f) = &s.expiration_field
                && valid_for.is_none()
                && pools[pool_idx as usize].expires_at.is_none()
            {
                diags.push(src.diag(
                    Severity::Error,
                    Some(f.span()),
                    at("expiration_field"),
                    "needs `valid_for` on the step or `expires_at` on the pool",
                ));
                return None;
            }
            StepKind::SetCouponCode {
                pool: pool_idx,
                field,
                expiration_field,
                valid_for,
                when_exhausted,
            }
        }
        "split" => match &s.branches {
            Some(b) => StepKind::Split {
                branches: compile_branches(src, &at("branches"), b, step_ids, diags)?,
            },
            None => {
                missing("branches", diags);
                return None;
            }
        },
        "message" => match &s.message {
            Some(m) => StepKind::Message {
                message: non_empty(src, m, at("message"), diags)?,
                window: match &s.send_window {
                    Some(w) => Some(window::compile(src, w, &at("send_window"), diags)?),
                    None => default_window,
                },
                when_capped: match &s.when_capped {
                    None => crate::domain::definition::CapOutcome::Suppress,
                    Some(w) => match w.get_ref().as_str() {
                        "suppress" => crate::domain::definition::CapOutcome::Suppress,
                        "wait" => crate::domain::definition::CapOutcome::Wait,
                        other => {
                            diags.push(src.diag(
                                Severity::Error,
                                Some(w.span()),
                                at("when_capped"),
                                format!("{other:?}: use \"suppress\" or \"wait\""),
                            ));
                            return None;
                        }
                    },
                },
            },
            None => {
                missing("message", diags);
                return None;
            }
        },
        _ => return None,
    };
    let window = match (&kind, &s.send_window) {
        (StepKind::Wait(_) | StepKind::CadenceWait(_), Some(w)) => {
            Some(window::compile(src, w, &at("send_window"), diags)?)
        }
        _ => None,
    };
    ok.then_some((kind, window))
}

/// A cadence wait's bounds: durations, `0 < min <= max`, a fallback of at
/// least a minute, a positive factor.
fn compile_cadence(
    src: &Source<'_>,
    at: &str,
    raw: &Spanned<raw::RawCadence>,
    diags: &mut Vec<Diagnostic>,
) -> Option<crate::domain::definition::Cadence> {
    let before = diags.len();
    let r = raw.get_ref();
    let dur = |name: &str, v: &str, diags: &mut Vec<Diagnostic>| {
        let spanned = Spanned::new(raw.span(), v.to_string());
        parse_duration(src, &spanned, format!("{at}.{name}"), diags)
    };
    let (min, max, fallback) = (
        dur("min", &r.min, diags),
        dur("max", &r.max, diags),
        dur("fallback", &r.fallback, diags),
    );
    let mut err = |f: &str, msg: &str| {
        diags.push(src.diag(Severity::Error, Some(raw.span()), format!("{at}.{f}"), msg));
    };
    let factor = r.factor.unwrap_or(1.0);
    if !(factor.is_finite() && factor > 0.0) {
        err(
            "factor",
            "must be a number above 0 (1 waits the contact's mean gap between orders)",
        );
    }
    if let (Some(lo), Some(hi)) = (min, max) {
        if lo.0 <= 0 {
            err("min", "must be longer than 0");
        }
        if lo > hi {
            err("min", "is longer than `max`");
        }
    }
    if fallback.is_some_and(|f| f.0 < crate::domain::time::MINUTE_MS) {
        err("fallback", "must be at least 1m");
    }
    if diags.len() != before {
        return None;
    }
    Some(crate::domain::definition::Cadence {
        factor,
        min: min?,
        max: max?,
        fallback: fallback?,
    })
}

/// A split step's branches: named, each name once, weights from 1, targets
/// that exist; at least two.
fn compile_branches(
    src: &Source<'_>,
    at: &str,
    raw: &Spanned<Vec<raw::RawBranch>>,
    step_ids: &HashMap<String, StepIdx>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<crate::domain::definition::Branch>> {
    let before = diags.len();
    let mut err = |msg: String| {
        diags.push(src.diag(Severity::Error, Some(raw.span()), at.to_string(), msg));
    };
    if raw.get_ref().len() < 2 {
        err("a split needs at least two branches".into());
    }
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for b in raw.get_ref() {
        let name = b.name.trim();
        if name.is_empty() || !names.insert(name.to_string()) {
            err(format!("branch name {name:?} is empty or used twice"));
        }
        let weight = b.weight.unwrap_or(1);
        if weight == 0 {
            err(format!("branch {name:?}: weight must be at least 1"));
        }
        match step_ids.get(b.target.trim()) {
            Some(&target) => out.push(crate::domain::definition::Branch {
                name: name.into(),
                weight,
                target,
            }),
            None => err(format!("branch {name:?}: no step with id {:?}", b.target)),
        }
    }
    (diags.len() == before).then_some(out)
}

fn compile_filter(
    src: &Source<'_>,
    at: &str,
    spanned: &Spanned<RawFilter>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Filter> {
    let f = spanned.get_ref();
    let before = diags.len();
    let dur = |v: &Option<Spanned<String>>, name: &str, diags: &mut Vec<Diagnostic>| {
        v.as_ref()
            .and_then(|v| parse_duration(src, v, format!("{at}.{name}"), diags))
    };
    let cents = |v: &Option<Spanned<f64>>, name: &str, diags: &mut Vec<Diagnostic>| {
        v.as_ref().and_then(|v| {
            let cents = crate::domain::event::amount_to_cents(*v.get_ref());
            if cents.is_none() {
                diags.push(src.diag(
                    Severity::Error,
                    Some(v.span()),
                    format!("{at}.{name}"),
                    "must be a non-negative amount",
                ));
            }
            cents
        })
    };
    let filter = Filter {
        merchant: f
            .merchant
            .as_ref()
            .and_then(|m| non_empty(src, m, format!("{at}.merchant"), diags))
            .map(|m| Box::from(&*m)),
        last_order_before: dur(&f.last_order_before, "last_order_before", diags),
        last_order_after: dur(&f.last_order_after, "last_order_after", diags),
        min_orders: f.min_orders.as_ref().map(|v| *v.get_ref()),
        max_orders: f.max_orders.as_ref().map(|v| *v.get_ref()),
        min_total_cents: cents(&f.min_total_spent, "min_total_spent", diags),
        max_total_cents: cents(&f.max_total_spent, "max_total_spent", diags),
        subscribed_to: f
            .subscribed_to
            .as_ref()
            .and_then(|m| non_empty(src, m, format!("{at}.subscribed_to"), diags))
            .map(|m| Box::from(&*m)),
        profile: f
            .profile
            .as_ref()
            .map(|p| profile::compile(src, at, p, diags))
            .unwrap_or_default(),
    };
    if let (Some(lo), Some(hi)) = (&f.min_orders, &f.max_orders)
        && lo.get_ref() > hi.get_ref()
    {
        diags.push(src.diag(
            Severity::Error,
            Some(lo.span()),
            format!("{at}.min_orders"),
            "is greater than max_orders: the filter can never hold",
        ));
    }
    if let (Some(lo), Some(hi)) = (filter.min_total_cents, filter.max_total_cents)
        && lo > hi
    {
        let span = f.min_total_spent.as_ref().map(Spanned::span);
        diags.push(src.diag(
            Severity::Error,
            span,
            format!("{at}.min_total_spent"),
            "is greater than max_total_spent: the filter can never hold",
        ));
    }
    if (Filter {
        merchant: None,
        ..filter.clone()
    }) == Filter::default()
        && diags.len() == before
    {
        diags.push(src.diag(
            Severity::Error,
            Some(spanned.span()),
            at.to_string(),
            "names no condition (a merchant alone filters nothing): add one, or remove the filter",
        ));
    }
    (diags.len() == before).then_some(filter)
}
