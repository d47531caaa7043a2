//! Protobuf (`winback.v1`) forms of events and transitions.

use prost::Message;

use super::json::transition_id_hex;
use super::view::{Detail, view};
use crate::domain::time::Timestamp;
use crate::domain::transition::Transition;
use crate::domain::{Definitions, Event};
use crate::pb;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("invalid protobuf event: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("field `occurred_at` is missing")]
    MissingTime,
    #[error("field `occurred_at` is outside the years 0000 to 9999 (UTC)")]
    TimeRange,
    #[error("the transition has no detail")]
    MissingDetail,
}

fn to_pb_time(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.0.div_euclid(1000),
        nanos: (t.0.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn from_pb_time(t: &prost_types::Timestamp) -> Result<Timestamp, ProtoError> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(ProtoError::TimeRange);
    }
    t.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(t.nanos / 1_000_000)))
        .map(Timestamp)
        .filter(|t| t.accepted())
        .ok_or(ProtoError::TimeRange)
}

pub fn event_to_pb(ev: &Event) -> pb::InputEvent {
    pb::InputEvent {
        event_id: ev.event_id.clone(),
        name: ev.name.clone(),
        contact_id: ev.contact_id.clone(),
        occurred_at: Some(to_pb_time(ev.occurred_at)),
        merchant_id: ev.merchant_id.clone(),
        order_id: ev.order_id.clone(),
        total_cents: ev.total_cents,
        list_id: ev.list_id.clone(),
        attributes: ev.attributes.iter().cloned().collect(),
    }
}

pub fn decode_event(bytes: &[u8]) -> Result<Event, ProtoError> {
    let p = pb::InputEvent::decode(bytes)?;
    Ok(Event {
        occurred_at: from_pb_time(p.occurred_at.as_ref().ok_or(ProtoError::MissingTime)?)?,
        event_id: p.event_id,
        name: p.name,
        contact_id: p.contact_id,
        merchant_id: p.merchant_id,
        order_id: p.order_id,
        total_cents: p.total_cents,
        list_id: p.list_id,
        // A map: sorted by name, each name once.
        attributes: p.attributes.into_iter().collect(),
    })
}

pub fn transition_to_pb(defs: &Definitions, t: &Transition) -> pb::Transition {
    use pb::transition::Detail as P;
    let v = view(defs, t);
    let detail = match v.detail {
        Detail::Entered {
            event_id,
            event_name,
        } => P::Entered(pb::Entered {
            event_id: event_id.into(),
            event_name: event_name.into(),
        }),
        Detail::Reentered {
            event_id,
            event_name,
            previous_entry,
            left_thread,
            left_step,
        } => P::Reentered(pb::Reentered {
            event_id: event_id.into(),
            event_name: event_name.into(),
            previous_entry,
            left_thread: left_thread.into(),
            left_step: left_step.into(),
        }),
        Detail::WaitStarted {
            expires_at,
            duration,
        } => P::WaitStarted(pb::WaitStarted {
            expires_at: Some(to_pb_time(expires_at)),
            duration_ms: duration.0,
        }),
        Detail::Goto {
            target_thread,
            target_step,
            taken,
        } => P::Goto(pb::Goto {
            target_thread: target_thread.into(),
            target_step: target_step.into(),
            taken,
        }),
        Detail::Exited { reason, event } => P::Exited(pb::Exited {
            reason: reason.into(),
            event: event.map(Into::into),
        }),
        Detail::CouponAssigned {
            pool,
            code,
            field,
            expiration_field,
            expires_at,
        } => P::CouponAssigned(pb::CouponAssigned {
            pool: pool.into(),
            code: code.into(),
            field: field.into(),
            expiration_field: expiration_field.map(Into::into),
            expires_at: expires_at.map(to_pb_time),
        }),
        Detail::CouponPoolExhausted { pool, outcome } => {
            P::CouponPoolExhausted(pb::CouponPoolExhausted {
                pool: pool.into(),
                outcome: outcome.into(),
            })
        }
        Detail::CouponPoolLow { pool, remaining } => P::CouponPoolLow(pb::CouponPoolLow {
            pool: pool.into(),
            remaining,
        }),
        Detail::Send { message, fields } => P::Send(pb::Send {
            message: message.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }),
        Detail::Suppressed { message, reason } => P::Suppressed(pb::Suppressed {
            message: message.into(),
            reason: reason.into(),
        }),
        Detail::Forgotten {} => P::Forgotten(pb::Forgotten {}),
        Detail::Held { until, reason } => P::Held(pb::Held {
            until: Some(to_pb_time(until)),
            reason: reason.into(),
        }),
        Detail::Split {
            variant,
            target_thread,
            target_step,
        } => P::Split(pb::Split {
            variant: variant.into(),
            target_thread: target_thread.into(),
            target_step: target_step.into(),
        }),
        Detail::HeldOut { message } => P::HeldOut(pb::HeldOut {
            message: message.into(),
        }),
    };
    pb::Transition {
        transition_id: transition_id_hex(v.id),
        conversation: v.conversation.into(),
        contact_id: v.contact.into(),
        at: Some(to_pb_time(v.at)),
        entry: v.entry,
        thread: v.thread.into(),
        step: v.step.into(),
        detail: Some(detail),
    }
}

/// A transition read back from the topic, as the JSON line `simulate` prints
/// for it (same fields, same order, same bytes).
pub fn transition_json(t: &pb::Transition) -> Result<String, ProtoError> {
    use pb::transition::Detail as P;
    use std::collections::BTreeMap;

    #[derive(serde::Serialize)]
    struct Line<'a> {
        transition_id: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        conversation: &'a str,
        contact_id: &'a str,
        at: String,
        entry: u32,
        thread: &'a str,
        step: &'a str,
        #[serde(flatten)]
        detail: D<'a>,
    }
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum D<'a> {
        Entered {
            event_id: &'a str,
            event_name: &'a str,
        },
        Reentered {
            event_id: &'a str,
            event_name: &'a str,
            previous_entry: u32,
            left_thread: &'a str,
            left_step: &'a str,
        },
        WaitStarted {
            expires_at: String,
            duration: String,
        },
        Goto {
            target_thread: &'a str,
            target_step: &'a str,
            taken: bool,
        },
        Exited {
            reason: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            event: Option<&'a str>,
        },
        CouponAssigned {
            pool: &'a str,
            code: &'a str,
            field: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            expiration_field: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            expires_at: Option<String>,
        },
        CouponPoolExhausted {
            pool: &'a str,
            outcome: &'a str,
        },
        CouponPoolLow {
            pool: &'a str,
            remaining: u64,
        },
        Send {
            message: &'a str,
            fields: &'a BTreeMap<String, String>,
        },
        Suppressed {
            message: &'a str,
            reason: &'a str,
        },
        Forgotten {},
        Held {
            until: String,
            reason: &'a str,
        },
        Split {
            variant: &'a str,
            target_thread: &'a str,
            target_step: &'a str,
        },
        HeldOut {
            message: &'a str,
        },
    }
    let time = |t: &Option<prost_types::Timestamp>| -> Result<String, ProtoError> {
        Ok(from_pb_time(t.as_ref().ok_or(ProtoError::MissingTime)?)?.to_string())
    };
    let (kind, detail) = match t.detail.as_ref().ok_or(ProtoError::MissingDetail)? {
        P::Entered(d) => (
            "entered",
            D::Entered {
                event_id: &d.event_id,
                event_name: &d.event_name,
            },
        ),
        P::Reentered(d) => (
            "reentered",
            D::Reentered {
                event_id: &d.event_id,
                event_name: &d.event_name,
                previous_entry: d.previous_entry,
                left_thread: &d.left_thread,
                left_step: &d.left_step,
            },
        ),
        P::WaitStarted(d) => (
            "wait_started",
            D::WaitStarted {
                expires_at: time(&d.expires_at)?,
                duration: crate::domain::Duration(d.duration_ms).to_string(),
            },
        ),
        P::Goto(d) => (
            "goto",
            D::Goto {
                target_thread: &d.target_thread,
                target_step: &d.target_step,
                taken: d.taken,
            },
        ),
        P::Exited(d) => (
            "exited",
            D::Exited {
                reason: &d.reason,
                event: d.event.as_deref(),
            },
        ),
        P::CouponAssigned(d) => (
            "coupon_assigned",
            D::CouponAssigned {
                pool: &d.pool,
                code: &d.code,
                field: &d.field,
                expiration_field: d.expiration_field.as_deref(),
                expires_at: match &d.expires_at {
                    Some(_) => Some(time(&d.expires_at)?),
                    None => None,
                },
            },
        ),
        P::CouponPoolExhausted(d) => (
            "coupon_pool_exhausted",
            D::CouponPoolExhausted {
                pool: &d.pool,
                outcome: &d.outcome,
            },
        ),
        P::CouponPoolLow(d) => (
            "coupon_pool_low",
            D::CouponPoolLow {
                pool: &d.pool,
                remaining: d.remaining,
            },
        ),
        P::Send(d) => (
            "send",
            D::Send {
                message: &d.message,
                fields: &d.fields,
            },
        ),
        P::Suppressed(d) => (
            "suppressed",
            D::Suppressed {
                message: &d.message,
                reason: &d.reason,
            },
        ),
        P::Forgotten(_) => ("forgotten", D::Forgotten {}),
        P::Held(d) => (
            "held",
            D::Held {
                until: time(&d.until)?,
                reason: &d.reason,
            },
        ),
        P::Split(d) => (
            "split",
            D::Split {
                variant: &d.variant,
                target_thread: &d.target_thread,
                target_step: &d.target_step,
            },
        ),
        P::HeldOut(d) => (
            "held_out",
            D::HeldOut {
                message: &d.message,
            },
        ),
    };
    let line = Line {
        transition_id: &t.transition_id,
        kind,
        conversation: &t.conversation,
        contact_id: &t.contact_id,
        at: time(&t.at)?,
        entry: t.entry,
        thread: &t.thread,
        step: &t.step,
        detail,
    };
    Ok(serde_json::to_string(&line).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trips_through_protobuf() {
        let ev = Event {
            event_id: "e1".into(),
            name: "checkout".into(),
            contact_id: "c1".into(),
            occurred_at: Timestamp(1_767_607_200_123),
            merchant_id: Some("m1".into()),
            order_id: None,
            total_cents: Some(4990),
            list_id: None,
            attributes: vec![
                ("first_name".into(), "Ann".into()),
                ("tier".into(), "gold".into()),
            ],
        };
        let bytes = event_to_pb(&ev).encode_to_vec();
        assert_eq!(decode_event(&bytes).unwrap(), ev);
        // Pre-epoch instants keep their millisecond too.
        let early = Event {
            occurred_at: Timestamp(-1),
            ..ev
        };
        assert_eq!(
            decode_event(&event_to_pb(&early).encode_to_vec()).unwrap(),
            early
        );
    }

    #[test]
    fn undecodable_bytes_and_missing_time_are_errors() {
        assert!(matches!(
            decode_event(&[0xff, 0xff, 0xff]),
            Err(ProtoError::Decode(_))
        ));
        let no_time = pb::InputEvent {
            event_id: "e".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(matches!(
            decode_event(&no_time),
            Err(ProtoError::MissingTime)
        ));
    }
}
