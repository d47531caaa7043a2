//! `[frequency_cap]`: at most one among the loaded definition files.

use toml::Spanned;

use super::diagnostic::{Diagnostic, Severity, Source};
use super::parse_duration;
use super::raw::RawFile;
use crate::domain::definition::{FrequencyCap, MAX_CAPPED_MESSAGES};

pub(super) fn compile(
    parsed: &[(Source<'_>, RawFile)],
    diags: &mut Vec<Diagnostic>,
) -> Option<FrequencyCap> {
    let mut found: Option<(FrequencyCap, String)> = None;
    for (src, raw) in parsed {
        let Some(c) = &raw.frequency_cap else {
            continue;
        };
        let r = c.get_ref();
        let before = diags.len();
        if !(1..=MAX_CAPPED_MESSAGES).contains(&r.messages) {
            diags.push(src.diag(
                Severity::Error,
                Some(c.span()),
                "frequency_cap.messages",
                format!("must be 1 to {MAX_CAPPED_MESSAGES}"),
            ));
        }
        let per = parse_duration(
            src,
            &Spanned::new(c.span(), r.per.clone()),
            "frequency_cap.per".into(),
            diags,
        );
        if per.is_some_and(|p| p.0 <= 0) {
            diags.push(src.diag(
                Severity::Error,
                Some(c.span()),
                "frequency_cap.per",
                "must be longer than 0",
            ));
        }
        if let Some((_, other)) = &found {
            diags.push(src.diag(
                Severity::Error,
                Some(c.span()),
                "frequency_cap",
                format!("a frequency cap is already declared in {other}: one applies to all conversations"),
            ));
            continue;
        }
        if let (Some(per), true) = (per, diags.len() == before) {
            found = Some((
                FrequencyCap {
                    messages: r.messages,
                    per,
                },
                src.path.display().to_string(),
            ));
        }
    }
    found.map(|(c, _)| c)
}
