//! Send windows ("quiet hours"): the days and hours of the contact's own
//! time zone in which a message step may send. Pure: the zone database is
//! compiled in (chrono-tz), the instant is the caller's.

use chrono::{Datelike, LocalResult, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;

use super::time::Timestamp;

/// Days (Monday first) and the local hours `[from, to)` in minutes from
/// midnight, `from < to <= 24 * 60`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow {
    pub days: [bool; 7],
    pub from_min: u32,
    pub to_min: u32,
}

/// The instant a local wall time of `date` names in `tz`: the earlier of
/// two in a fall-back overlap, and the first minute after a spring-forward
/// gap for a time that does not exist that day.
fn at_local(tz: Tz, date: NaiveDate, minutes: u32) -> Option<Timestamp> {
    let midnight = date.and_hms_opt(0, 0, 0)?;
    // Minutes past a gap: at most the largest DST jump there is (2 h), and
    // a day's end (24:00) is the next day's midnight.
    for extra in 0..=180 {
        let local: NaiveDateTime =
            midnight + chrono::Duration::minutes(i64::from(minutes) + i64::from(extra));
        match tz.from_local_datetime(&local) {
            LocalResult::Single(t) => return Some(Timestamp(t.timestamp_millis())),
            LocalResult::Ambiguous(a, _) => return Some(Timestamp(a.timestamp_millis())),
            LocalResult::None => continue,
        }
    }
    None
}

impl SendWindow {
    /// The first instant at or after `t` inside the window in `tz`: `t`
    /// itself when it is inside. `None` only for instants chrono cannot
    /// place (outside any event's years), where the caller sends at once.
    pub fn next_open(&self, tz: Tz, t: Timestamp) -> Option<Timestamp> {
        let utc = chrono::DateTime::from_timestamp_millis(t.0)?;
        let mut date = utc.with_timezone(&tz).date_naive();
        // The window opens on some day of every week (validate).
        for _ in 0..8 {
            if self.days[date.weekday().num_days_from_monday() as usize] {
                let (open, close) = (
                    at_local(tz, date, self.from_min)?,
                    at_local(tz, date, self.to_min)?,
                );
                if t < open {
                    return Some(open);
                }
                if t < close {
                    return Some(t);
                }
            }
            date = date.succ_opt()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    const WEEKDAYS: SendWindow = SendWindow {
        days: [true, true, true, true, true, false, false],
        from_min: 9 * 60,
        to_min: 20 * 60,
    };

    #[test]
    fn opens_at_the_next_local_morning() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        // Tuesday 03:00 in Paris (02:00Z in winter) → 09:00 Paris = 08:00Z.
        assert_eq!(
            WEEKDAYS.next_open(paris, t("2026-01-06T02:00:00Z")),
            Some(t("2026-01-06T08:00:00Z"))
        );
        // Inside: now.
        let inside = t("2026-01-06T12:34:00Z");
        assert_eq!(WEEKDAYS.next_open(paris, inside), Some(inside));
        // Friday 20:00 Paris (closing, exclusive) → Monday 09:00.
        assert_eq!(
            WEEKDAYS.next_open(paris, t("2026-01-09T19:00:00Z")),
            Some(t("2026-01-12T08:00:00Z"))
        );
    }

    #[test]
    fn follows_daylight_saving_time() {
        let ny: Tz = "America/New_York".parse().unwrap();
        // Saturday 2026-03-07 → Monday 2026-03-09 09:00 EDT (13:00Z): the
        // clocks went forward on Sunday the 8th.
        assert_eq!(
            WEEKDAYS.next_open(ny, t("2026-03-07T15:00:00Z")),
            Some(t("2026-03-09T13:00:00Z"))
        );
        // A window opening in the gap (02:30 on the night clocks jump to
        // 03:00) opens at 03:00 local.
        let night = SendWindow {
            days: [true; 7],
            from_min: 2 * 60 + 30,
            to_min: 5 * 60,
        };
        assert_eq!(
            night.next_open(ny, t("2026-03-08T05:00:00Z")),
            Some(t("2026-03-08T07:00:00Z"))
        );
        // In the fall-back overlap 01:30 happens twice: the first one.
        let late = SendWindow {
            days: [true; 7],
            from_min: 90,
            to_min: 120,
        };
        assert_eq!(
            late.next_open(ny, t("2026-11-01T04:00:00Z")),
            Some(t("2026-11-01T05:30:00Z"))
        );
    }
}
