//! A one-line, human-readable form of a transition, for `simulate --format text`
//! and the golden scenario files:
//! `AT CONTACT #ENTRY TYPE THREAD / STEP DETAILS`.

use std::fmt::Write;

use super::view::{Detail, view};
use crate::domain::Definitions;
use crate::domain::transition::Transition;

pub fn render(defs: &Definitions, t: &Transition) -> String {
    let v = view(defs, t);
    let mut out = format!(
        "{} {} #{} {} {} / {}",
        v.at, v.contact, v.entry, v.kind, v.thread, v.step
    );
    let _ = match v.detail {
        Detail::Entered {
            event_id,
            event_name,
        } => write!(out, " event={event_id} ({event_name})"),
        Detail::Reentered {
            event_id,
            event_name,
            previous_entry,
            left_thread,
            left_step,
        } => write!(
            out,
            " event={event_id} ({event_name}) left #{previous_entry} at {left_thread} / {left_step}"
        ),
        Detail::WaitStarted {
            expires_at,
            duration,
        } => write!(out, " until {expires_at} ({duration})"),
        Detail::Goto {
            target_thread,
            target_step,
            taken: true,
        } => write!(out, " -> {target_thread} / {target_step}"),
        Detail::Goto {
            target_thread,
            target_step,
            taken: false,
        } => write!(
            out,
            " not taken: filter does not hold (target {target_thread} / {target_step})"
        ),
        Detail::Exited {
            reason,
            event: None,
        } => write!(out, " reason={reason}"),
        Detail::Exited {
            reason,
            event: Some(event),
        } => write!(out, " reason={reason} event={event}"),
        Detail::CouponAssigned {
            pool,
            code,
            field,
            expiration_field,
            expires_at,
        } => {
            let _ = write!(out, " pool={pool} {field}={code}");
            match (expiration_field, expires_at) {
                (Some(f), Some(x)) => write!(out, " {f}={x}"),
                (None, Some(x)) => write!(out, " expires={x}"),
                _ => Ok(()),
            }
        }
        Detail::CouponPoolExhausted { pool, outcome } => {
            write!(out, " pool={pool} outcome={outcome}")
        }
        Detail::CouponPoolLow { pool, remaining } => {
            write!(out, " pool={pool} remaining={remaining}")
        }
        Detail::Send { message, fields } => {
            let _ = write!(out, " message={message:?}");
            fields.iter().try_for_each(|(k, v)| write!(out, " {k}={v}"))
        }
        Detail::Suppressed { message, reason } => {
            write!(out, " message={message:?} reason={reason}")
        }
        Detail::Forgotten {} => Ok(()),
        Detail::Held { until, reason } => write!(out, " until {until} reason={reason}"),
        Detail::Split {
            variant,
            target_thread,
            target_step,
        } => write!(out, " variant={variant} -> {target_thread} / {target_step}"),
        Detail::HeldOut { message } => write!(out, " message={message:?}"),
    };
    out
}

/// Why a compact event line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseEventError {
    #[error("expected `AT CONTACT NAME [key=value ...]`")]
    Shape,
    #[error("{0}")]
    Time(String),
    #[error("unknown key {0:?} (use id, merchant, order, total, list, attr.NAME)")]
    Key(String),
    #[error(transparent)]
    Total(#[from] super::json::DecodeError),
    #[error("`total={0}` is not a number")]
    TotalNumber(String),
}

/// Reads the compact event form used in scenario files:
/// `2026-01-05T10:00:00Z c1 checkout merchant=m1 total=49.90 id=e1`;
/// `attr.first_name=Ann` sets an attribute.
/// Without `id=`, the id is `default_id`.
pub fn parse_event(line: &str, default_id: &str) -> Result<crate::domain::Event, ParseEventError> {
    let mut parts = line.split_whitespace();
    let (Some(at), Some(contact), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ParseEventError::Shape);
    };
    let mut ev = crate::domain::Event {
        event_id: default_id.to_string(),
        name: name.to_string(),
        contact_id: contact.to_string(),
        occurred_at: crate::domain::Timestamp::parse_rfc3339(at).map_err(ParseEventError::Time)?,
        merchant_id: None,
        order_id: None,
        total_cents: None,
        list_id: None,
        attributes: Vec::new(),
    };
    for kv in parts {
        let (k, v) = kv.split_once('=').ok_or(ParseEventError::Shape)?;
        match k {
            "id" => ev.event_id = v.to_string(),
            "merchant" => ev.merchant_id = Some(v.to_string()),
            "order" => ev.order_id = Some(v.to_string()),
            "list" => ev.list_id = Some(v.to_string()),
            "total" => {
                let x: f64 = v
                    .parse()
                    .map_err(|_| ParseEventError::TotalNumber(v.to_string()))?;
                ev.total_cents = Some(super::json::total_to_cents(x)?);
            }
            attr if attr.starts_with("attr.") => {
                let name = &attr["attr.".len()..];
                ev.attributes.retain(|(k, _)| k != name);
                ev.attributes.push((name.to_string(), v.to_string()));
            }
            other => return Err(ParseEventError::Key(other.to_string())),
        }
    }
    ev.attributes.sort();
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_events_parse() {
        let e = parse_event(
            "2026-01-05T10:00:00Z c1 checkout merchant=m1 total=49.90",
            "e7",
        )
        .unwrap();
        assert_eq!(
            (e.event_id.as_str(), e.merchant_id.as_deref(), e.total_cents),
            ("e7", Some("m1"), Some(4990))
        );
        let s = parse_event("2026-01-01T00:00:00Z c1 subscribe list=master id=s1", "x").unwrap();
        assert_eq!(
            (s.event_id.as_str(), s.list_id.as_deref()),
            ("s1", Some("master"))
        );
        assert!(parse_event("2026-01-01T00:00:00Z c1", "x").is_err());
        assert!(parse_event("2026-01-01T00:00:00Z c1 checkout colour=red", "x").is_err());
        assert!(parse_event("2026-01-01T00:00:00Z c1 checkout total=abc", "x").is_err());
    }
}
