//! `send_window` tables (of a conversation and of a message step) and the
//! conversation's `time_zone`.

use toml::Spanned;

use super::diagnostic::{Diagnostic, Severity, Source};
use super::raw::RawSendWindow;
use crate::domain::window::SendWindow;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn minutes(s: &str) -> Option<u32> {
    let (h, m) = s.trim().split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    let total = h * 60 + m;
    (m < 60 && total <= 24 * 60).then_some(total)
}

/// The window at `field`, every problem reported there.
pub(super) fn compile(
    src: &Source<'_>,
    raw: &Spanned<RawSendWindow>,
    field: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<SendWindow> {
    let before = diags.len();
    let mut err = |f: &str, msg: String| {
        diags.push(src.diag(
            Severity::Error,
            Some(raw.span()),
            format!("{field}.{f}"),
            msg,
        ));
    };
    let r = raw.get_ref();
    let mut days = [r.days.is_none(); 7];
    for d in r.days.iter().flatten() {
        match DAYS.iter().position(|x| x.eq_ignore_ascii_case(d.trim())) {
            Some(i) => days[i] = true,
            None => err(
                "days",
                format!("{d:?} is not a day: use mon, tue, wed, thu, fri, sat, sun"),
            ),
        }
    }
    if !days.contains(&true) {
        err("days", "name at least one day".into());
    }
    let from = minutes(&r.from);
    let to = minutes(&r.to);
    if from.is_none() {
        err(
            "from",
            format!("{:?} is not a time such as \"09:00\"", r.from),
        );
    }
    if to.is_none() {
        err(
            "to",
            format!(
                "{:?} is not a time such as \"20:00\" (up to \"24:00\")",
                r.to
            ),
        );
    }
    if let (Some(f), Some(t)) = (from, to)
        && f >= t
    {
        err(
            "to",
            format!(
                "{:?} is not after {:?}: a window ends the day it starts (split one over midnight in two conversations' hours, or widen it)",
                r.to, r.from
            ),
        );
    }
    (diags.len() == before).then(|| SendWindow {
        days,
        from_min: from.unwrap_or(0),
        to_min: to.unwrap_or(0),
    })
}

/// The conversation's `time_zone`, an IANA name; `UTC` when absent.
pub(super) fn zone(
    src: &Source<'_>,
    raw: Option<&Spanned<String>>,
    diags: &mut Vec<Diagnostic>,
) -> chrono_tz::Tz {
    let Some(raw) = raw else {
        return chrono_tz::UTC;
    };
    match raw.get_ref().trim().parse::<chrono_tz::Tz>() {
        Ok(tz) => tz,
        Err(_) => {
            diags.push(src.diag(
                Severity::Error,
                Some(raw.span()),
                "conversation.time_zone",
                format!(
                    "{:?} is not a time zone of the IANA database (e.g. \"Europe/Paris\", \"America/New_York\", \"UTC\")",
                    raw.get_ref()
                ),
            ));
            chrono_tz::UTC
        }
    }
}

#[cfg(test)]
mod tests {
    use super::minutes;

    #[test]
    fn times_are_hh_mm_up_to_midnight() {
        assert_eq!(minutes("09:00"), Some(540));
        assert_eq!(minutes("24:00"), Some(1440));
        for bad in ["9:00", "24:01", "12:60", "noon", "12"] {
            assert_eq!(minutes(bad), None, "{bad}");
        }
    }
}
