//! A segment filter's `profile` table: one condition per profile field.

use std::collections::BTreeMap;

use toml::Spanned;

use super::diagnostic::{Diagnostic, Severity, Source};
use super::raw::RawProfileTest;
use crate::domain::definition::ProfileTest;

/// The compiled conditions, in field-name order; every problem reported at
/// `{at}.profile.{field}`.
pub(super) fn compile(
    src: &Source<'_>,
    at: &str,
    raw: &BTreeMap<String, Spanned<RawProfileTest>>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(Box<str>, ProfileTest)> {
    let mut out = Vec::new();
    for (name, t) in raw {
        let field = format!("{at}.profile.{name}");
        let mut err = |msg: &str| {
            diags.push(src.diag(Severity::Error, Some(t.span()), field.clone(), msg));
        };
        if name.trim().is_empty() {
            err("the field name must not be empty");
            continue;
        }
        let r = t.get_ref();
        let kinds = [
            r.equals.is_some(),
            r.one_of.is_some(),
            r.exists.is_some(),
            r.min.is_some() || r.max.is_some(),
        ]
        .iter()
        .filter(|k| **k)
        .count();
        if kinds != 1 {
            err("name exactly one condition: `equals`, `in`, `exists`, or `min` and/or `max`");
            continue;
        }
        let test = if let Some(e) = &r.equals {
            ProfileTest::Equals(e.as_str().into())
        } else if let Some(list) = &r.one_of {
            if list.is_empty() {
                err("`in` needs at least one value");
                continue;
            }
            ProfileTest::In(list.iter().map(|v| v.as_str().into()).collect())
        } else if let Some(e) = r.exists {
            ProfileTest::Exists(e)
        } else {
            if r.min.is_some_and(|m| !m.is_finite()) || r.max.is_some_and(|m| !m.is_finite()) {
                err("`min` and `max` must be finite numbers");
                continue;
            }
            if let (Some(lo), Some(hi)) = (r.min, r.max)
                && lo > hi
            {
                err("`min` is greater than `max`: the filter can never hold");
                continue;
            }
            ProfileTest::Between {
                min: r.min,
                max: r.max,
            }
        };
        out.push((name.trim().into(), test));
    }
    out
}
