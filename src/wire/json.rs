//! JSON lines: the input event form and the transition form (README.md lists
//! every field).

use serde::{Deserialize, Serialize};

use super::view::view;
use crate::domain::time::Timestamp;
use crate::domain::transition::Transition;
use crate::domain::{Definitions, Event};

/// Why a JSON event line could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid `occurred_at`: {0}")]
    Timestamp(String),
    #[error("invalid `total` {0}: must be a non-negative amount")]
    Total(f64),
    #[error("attribute {0:?} must be a string, a number or a boolean")]
    Attribute(String),
}

/// Unknown keys are ignored, so producers can carry more than winback reads.
#[derive(Debug, Deserialize)]
struct JsonEvent {
    event_id: String,
    name: String,
    contact_id: String,
    occurred_at: String,
    #[serde(default)]
    merchant_id: Option<String>,
    #[serde(default)]
    order_id: Option<String>,
    #[serde(default)]
    total: Option<f64>,
    #[serde(default)]
    list_id: Option<String>,
    #[serde(default)]
    attributes: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Attributes as text: a number as JSON writes it, a boolean as `true` or
/// `false`; anything else is refused.
fn attributes(
    raw: std::collections::BTreeMap<String, serde_json::Value>,
) -> Result<Vec<(String, String)>, DecodeError> {
    raw.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Number(n) => Ok((k, n.to_string())),
            serde_json::Value::Bool(b) => Ok((k, b.to_string())),
            _ => Err(DecodeError::Attribute(k)),
        })
        .collect()
}

/// Amounts are kept in cents; a decimal `total` is rounded to the nearest cent.
pub fn total_to_cents(total: f64) -> Result<i64, DecodeError> {
    crate::domain::event::amount_to_cents(total).ok_or(DecodeError::Total(total))
}

pub fn decode_event(line: &str) -> Result<Event, DecodeError> {
    let j: JsonEvent = serde_json::from_str(line)?;
    Ok(Event {
        occurred_at: Timestamp::parse_rfc3339(&j.occurred_at).map_err(DecodeError::Timestamp)?,
        total_cents: j.total.map(total_to_cents).transpose()?,
        event_id: j.event_id,
        name: j.name,
        contact_id: j.contact_id,
        merchant_id: j.merchant_id,
        order_id: j.order_id,
        list_id: j.list_id,
        attributes: attributes(j.attributes)?,
    })
}

pub fn encode_event(ev: &Event) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        event_id: &'a str,
        name: &'a str,
        contact_id: &'a str,
        occurred_at: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        merchant_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        order_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        total: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        list_id: Option<&'a str>,
        #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        attributes: std::collections::BTreeMap<&'a str, &'a str>,
    }
    let out = Out {
        event_id: &ev.event_id,
        name: &ev.name,
        contact_id: &ev.contact_id,
        occurred_at: ev.occurred_at.to_rfc3339(),
        merchant_id: ev.merchant_id.as_deref(),
        order_id: ev.order_id.as_deref(),
        total: ev.total_cents.map(|c| c as f64 / 100.0),
        list_id: ev.list_id.as_deref(),
        attributes: ev
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
    };
    serde_json::to_string(&out).unwrap_or_default()
}

pub fn transition_id_hex(id: u128) -> String {
    format!("{id:032x}")
}

/// One transition as a single JSON line (no trailing newline): the
/// serialization of its [`view`]. Field order is fixed, so equal transitions
/// give equal bytes.
pub fn encode_transition(defs: &Definitions, t: &Transition) -> String {
    // Strings, numbers and maps of strings always serialize.
    serde_json::to_string(&view(defs, t)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_documented_examples() {
        let e = decode_event(r#"{"event_id":"e1","name":"checkout","contact_id":"c1","occurred_at":"2026-01-05T10:00:00Z","merchant_id":"m1","order_id":"o1","total":49.9}"#).unwrap();
        assert_eq!(e.total_cents, Some(4990));
        assert_eq!(e.occurred_at.to_rfc3339(), "2026-01-05T10:00:00Z");
        let s = decode_event(r#"{"event_id":"e2","name":"subscribe","contact_id":"c1","list_id":"master","occurred_at":"2026-01-01T00:00:00Z","extra":1}"#).unwrap();
        assert_eq!(s.list_id.as_deref(), Some("master"));
        assert_eq!(decode_event(&encode_event(&e)).unwrap(), e);
        let a = decode_event(r#"{"event_id":"e3","name":"profile_updated","contact_id":"c1","occurred_at":"2026-01-01T00:00:00Z","attributes":{"tier":"gold","ltv":750.5,"vip":true,"first_name":"Ann"}}"#).unwrap();
        let want: Vec<(String, String)> = [
            ("first_name", "Ann"),
            ("ltv", "750.5"),
            ("tier", "gold"),
            ("vip", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(a.attributes, want);
        assert_eq!(decode_event(&encode_event(&a)).unwrap(), a);
    }

    #[test]
    fn reports_why_a_line_is_bad() {
        let cases = [
            ("{", "invalid JSON"),
            (
                r#"{"event_id":"e","name":"n","occurred_at":"2026-01-01T00:00:00Z"}"#,
                "missing field `contact_id`",
            ),
            (
                r#"{"event_id":"e","name":"n","contact_id":"c","occurred_at":"yesterday"}"#,
                "invalid `occurred_at`",
            ),
            (
                r#"{"event_id":"e","name":"n","contact_id":"c","occurred_at":"2026-01-01T00:00:00Z","total":-1}"#,
                "invalid `total`",
            ),
            (
                r#"{"event_id":"e","name":"n","contact_id":"c","occurred_at":"2026-01-01T00:00:00Z","total":"12"}"#,
                "invalid type",
            ),
            (
                r#"{"event_id":"e","name":"n","contact_id":"c","occurred_at":"2026-01-01T00:00:00Z","attributes":{"tier":null}}"#,
                "attribute \"tier\" must be a string, a number or a boolean",
            ),
        ];
        for (line, want) in cases {
            let err = decode_event(line).unwrap_err().to_string();
            assert!(err.contains(want), "{line}: {err}");
        }
    }
}
