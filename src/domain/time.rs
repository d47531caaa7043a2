//! Event-time values. The domain never reads a clock: every instant comes from an
//! input event, a timer, or the caller.

use std::fmt;

/// Milliseconds since the Unix epoch, UTC. Sub-millisecond precision of input
/// timestamps is truncated at decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

/// An optional instant in 8 bytes, where `Option<Timestamp>` takes 16: for
/// the per-contact state, which a million contacts multiply (its four optional
/// instants took 64 of its 352 bytes). `i64::MIN` stands for none: no input
/// names that instant (RFC 3339 years stop at 0000; a protobuf time's seconds
/// times 1,000 plus its milliseconds never land on it; stored states naming
/// it are refused on load), and a wait's expiry only adds to a time. Were it
/// ever given, it is kept as one millisecond later rather than lost.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaybeTimestamp(i64);

impl MaybeTimestamp {
    pub const NONE: MaybeTimestamp = MaybeTimestamp(i64::MIN);

    #[inline]
    pub fn get(self) -> Option<Timestamp> {
        (self.0 != i64::MIN).then_some(Timestamp(self.0))
    }
}

impl Default for MaybeTimestamp {
    fn default() -> Self {
        MaybeTimestamp::NONE
    }
}

impl From<Timestamp> for MaybeTimestamp {
    #[inline]
    fn from(t: Timestamp) -> Self {
        debug_assert!(t.0 != i64::MIN, "the instant that stands for none");
        MaybeTimestamp(t.0.max(i64::MIN + 1))
    }
}

impl From<Option<Timestamp>> for MaybeTimestamp {
    #[inline]
    fn from(t: Option<Timestamp>) -> Self {
        t.map_or(MaybeTimestamp::NONE, MaybeTimestamp::from)
    }
}

impl fmt::Debug for MaybeTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

/// A non-negative span of time in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub i64);

pub const SECOND_MS: i64 = 1_000;
pub const MINUTE_MS: i64 = 60 * SECOND_MS;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// The longest wait a conversation may define: 100 years.
pub const MAX_WAIT: Duration = Duration(36_500 * DAY_MS);

impl Timestamp {
    /// The earliest instant winback accepts anywhere (events, `--until`,
    /// config): 0000-01-01T00:00:00Z, where RFC 3339 years begin.
    pub const MIN_ACCEPTED: Timestamp = Timestamp(-62_167_219_200_000);
    /// The latest: 9999-12-31T23:59:59.999Z, where RFC 3339 years end. Any
    /// accepted instant plus the longest wait ([`MAX_WAIT`]) and a timer
    /// horizon stays about 36,000 times its own size away from `i64::MAX`,
    /// so no sum on the way to a timer saturates and no loop that moves a
    /// clock towards an instant can fail to reach it.
    pub const MAX_ACCEPTED: Timestamp = Timestamp(253_402_300_799_999);

    /// Whether an input may carry this instant.
    pub fn accepted(self) -> bool {
        (Self::MIN_ACCEPTED..=Self::MAX_ACCEPTED).contains(&self)
    }

    pub fn saturating_add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d.0))
    }
    pub fn saturating_sub(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(d.0))
    }
    /// RFC 3339 in UTC with `Z`, milliseconds only when non-zero.
    pub fn to_rfc3339(self) -> String {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(dt) => dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            None => format!("@{}ms", self.0),
        }
    }
    pub fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
        let t = chrono::DateTime::parse_from_rfc3339(s)
            .map(|dt| Timestamp(dt.timestamp_millis()))
            .map_err(|e| format!("not an RFC 3339 timestamp ({e}): {s:?}"))?;
        // An offset can carry a year-9999 local time past the end in UTC.
        if !t.accepted() {
            return Err(format!("{s:?} is outside the years 0000 to 9999 in UTC"));
        }
        Ok(t)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Duration {
    pub const ZERO: Duration = Duration(0);

    pub fn days(n: i64) -> Duration {
        Duration(n * DAY_MS)
    }

    /// Parses `90d`, `36h`, `30m`, `45s`, compounds such as `1d12h`, and `0` /
    /// `no wait` for no wait at all. Units must not repeat or go up in size.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let t = s.trim();
        if t == "0" || t.eq_ignore_ascii_case("no wait") || t.eq_ignore_ascii_case("none") {
            return Ok(Duration::ZERO);
        }
        if t.is_empty() {
            return Err("empty duration".into());
        }
        let mut total: i64 = 0;
        let mut num = String::new();
        let mut last_rank = usize::MAX;
        for ch in t.chars() {
            if ch.is_ascii_digit() {
                num.push(ch);
                continue;
            }
            let (unit_ms, rank) = match ch {
                'd' => (DAY_MS, 3),
                'h' => (HOUR_MS, 2),
                'm' => (MINUTE_MS, 1),
                's' => (SECOND_MS, 0),
                _ => {
                    return Err(format!(
                        "bad duration {s:?}: unexpected {ch:?} (use e.g. 90d, 36h, 30m, 45s, 1d12h, or 0)"
                    ));
                }
            };
            if num.is_empty() {
                return Err(format!(
                    "bad duration {s:?}: a number must come before {ch:?}"
                ));
            }
            if rank >= last_rank {
                return Err(format!(
                    "bad duration {s:?}: units must go from days down to seconds, once each"
                ));
            }
            last_rank = rank;
            let n: i64 = num
                .parse()
                .map_err(|_| format!("bad duration {s:?}: number too large"))?;
            total = n
                .checked_mul(unit_ms)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| format!("bad duration {s:?}: too large"))?;
            num.clear();
        }
        if !num.is_empty() {
            return Err(format!(
                "bad duration {s:?}: {num} has no unit (d, h, m or s)"
            ));
        }
        Ok(Duration(total))
    }
}

impl fmt::Display for Duration {
    /// The shortest exact form in days/hours/minutes/seconds, `0` for none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0");
        }
        let mut rest = self.0;
        for (unit, ms) in [
            ("d", DAY_MS),
            ("h", HOUR_MS),
            ("m", MINUTE_MS),
            ("s", SECOND_MS),
        ] {
            if rest >= ms {
                write!(f, "{}{unit}", rest / ms)?;
                rest %= ms;
            }
        }
        if rest > 0 {
            write!(f, "{rest}ms")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maybe_timestamp_is_an_option_in_eight_bytes() {
        assert_eq!(std::mem::size_of::<MaybeTimestamp>(), 8);
        assert_eq!(MaybeTimestamp::default().get(), None);
        assert_eq!(MaybeTimestamp::NONE.get(), None);
        for t in [i64::MIN + 1, -1, 0, 1_767_225_600_000, i64::MAX] {
            let m = MaybeTimestamp::from(Timestamp(t));
            assert_eq!(m.get(), Some(Timestamp(t)));
            assert_eq!(MaybeTimestamp::from(Some(Timestamp(t))), m);
        }
        assert_eq!(MaybeTimestamp::from(None), MaybeTimestamp::NONE);
        assert_eq!(
            format!("{:?}", MaybeTimestamp::from(Timestamp(5))),
            "Some(Timestamp(5))"
        );
    }

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(Duration::parse("90d"), Ok(Duration(90 * DAY_MS)));
        assert_eq!(Duration::parse("36h"), Ok(Duration(36 * HOUR_MS)));
        assert_eq!(Duration::parse("1d12h"), Ok(Duration(36 * HOUR_MS)));
        assert_eq!(Duration::parse("0"), Ok(Duration::ZERO));
        assert_eq!(Duration::parse("No Wait"), Ok(Duration::ZERO));
        assert_eq!(Duration::parse("45s"), Ok(Duration(45 * SECOND_MS)));
    }

    #[test]
    fn rejects_bad_durations() {
        for bad in [
            "",
            "90",
            "d",
            "-1d",
            "1h2d",
            "1d1d",
            "90 days",
            "1.5d",
            "99999999999999999d",
        ] {
            assert!(Duration::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["90d", "36h", "1d12h", "0", "2h30m", "45s"] {
            let d = Duration::parse(s).unwrap();
            let again = Duration::parse(&d.to_string()).unwrap();
            assert_eq!(d, again);
        }
        assert_eq!(Duration::parse("36h").unwrap().to_string(), "1d12h");
    }

    #[test]
    fn timestamps_format_in_utc() {
        let t = Timestamp::parse_rfc3339("2026-01-05T11:00:00+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-05T10:00:00Z");
        let t = Timestamp::parse_rfc3339("2026-01-05T10:00:00.250Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-05T10:00:00.250Z");
        assert!(Timestamp::parse_rfc3339("2026-01-05").is_err());
    }
}
