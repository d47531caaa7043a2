//! A contact's state as a versioned protobuf record (`winback.v1.ContactStateRecord`).
//!
//! Conversations and steps are stored by name, so a record stays valid when
//! definitions gain or reorder conversations, threads and steps. A record that
//! names a conversation or step the loaded definitions lack is refused with the
//! name; nothing is dropped silently (what to do then is the runtime's policy).

use std::sync::Arc;

use prost::Message;
use smallvec::SmallVec;

use crate::domain::definition::{ConvIdx, Definitions, StepIdx};
use crate::domain::state::{
    ConversationState, DEDUP_WINDOW, Entry, Field, FieldValue, Fields, MerchantStats, OrderStats,
    Subscription,
};
use crate::domain::{ContactState, MaybeTimestamp, Timestamp};
use crate::pb;

/// The version this build writes and the only one it reads.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("undecodable contact state: {0}")]
    Decode(String),
    #[error("contact state has schema version {found}; this build reads version {SCHEMA_VERSION}")]
    Version { found: u32 },
    #[error("contact state names {what} {name:?}, which the loaded definitions do not have")]
    Unknown { what: &'static str, name: String },
    #[error("contact state is inconsistent: {0}")]
    Invalid(String),
}

fn orders_to_pb(o: &OrderStats) -> pb::OrderStatsRecord {
    pb::OrderStatsRecord {
        count: u64::from(o.count),
        total_cents: o.total_cents,
        last_order_at_ms: o.last_order_at.get().map(|t| t.0),
        first_order_at_ms: o.first_order_at().map(|t| t.0),
    }
}

fn orders_from_pb(o: Option<pb::OrderStatsRecord>) -> Result<OrderStats, CodecError> {
    let o = o.unwrap_or_default();
    let last_order_at = time_from_pb("last_order_at_ms", o.last_order_at_ms)?;
    // A state written before the first order was kept knows no gap:
    // cadence waits use their fallback for it.
    let span_secs = match (last_order_at.get(), o.first_order_at_ms) {
        (Some(l), Some(f)) => u32::try_from(l.0.saturating_sub(f).max(0) / 1000)
            .unwrap_or(crate::domain::state::UNKNOWN_SPAN),
        (Some(_), None) => crate::domain::state::UNKNOWN_SPAN,
        (None, _) => 0,
    };
    Ok(OrderStats {
        count: u32::try_from(o.count).unwrap_or(u32::MAX),
        span_secs,
        total_cents: o.total_cents,
        last_order_at,
    })
}

/// A stored optional instant; refuses `i64::MIN`, which no event or wait
/// makes and which the state uses for none ([`MaybeTimestamp`]).
fn time_from_pb(field: &str, ms: Option<i64>) -> Result<MaybeTimestamp, CodecError> {
    match ms {
        Some(i64::MIN) => Err(CodecError::Invalid(format!(
            "{field} is {}, outside any instant an event can name",
            i64::MIN
        ))),
        ms => Ok(ms.map(Timestamp).into()),
    }
}

pub fn encode(defs: &Definitions, st: &ContactState) -> Vec<u8> {
    let record = pb::ContactStateRecord {
        schema_version: SCHEMA_VERSION,
        recent_events: st.recent_events.to_vec(),
        // Oldest first: the ring's oldest slot is its first.
        recent_next: 0,
        orders: Some(orders_to_pb(&st.orders)),
        merchants: st
            .merchants
            .iter()
            .map(|m| pb::MerchantStatsRecord {
                merchant: m.merchant.to_string(),
                stats: Some(orders_to_pb(&m.stats)),
            })
            .collect(),
        subscriptions: st
            .subscriptions
            .iter()
            .map(|s| pb::SubscriptionRecord {
                list: s.list.to_string(),
                subscribed: s.subscribed,
                at_ms: s.at.0,
            })
            .collect(),
        fields: st
            .fields
            .as_slice()
            .iter()
            .map(|(name, v)| pb::FieldRecord {
                name: name.to_string(),
                value: Some(match v {
                    FieldValue::Text(t) => pb::field_record::Value::Text(t.to_string()),
                    FieldValue::Time(t) => pb::field_record::Value::TimeMs(t.0),
                    FieldValue::Attribute(a) => {
                        pb::field_record::Value::Attribute(pb::AttributeRecord {
                            text: a.text.to_string(),
                            at_ms: a.at.0,
                        })
                    }
                }),
            })
            .collect(),
        sent_at_ms: st.fields.sends().iter().map(|t| t.0).collect(),
        conversations: st
            .conversations
            .iter()
            .map(|c| {
                let conv = &defs.conversations[c.conversation as usize];
                pb::ConversationStateRecord {
                    conversation: conv.name.to_string(),
                    entries_started: c.entries_started,
                    active: c
                        .active
                        .iter()
                        .map(|e| pb::EntryRecord {
                            seq: e.seq,
                            step: conv.steps[e.step as usize].id.to_string(),
                            started_at_ms: e.started_at.0,
                            waiting_until_ms: e.waiting_until.get().map(|t| t.0),
                            transitions: e.transitions,
                        })
                        .collect(),
                }
            })
            .collect(),
    };
    record.encode_to_vec()
}

pub fn decode(defs: &Definitions, bytes: &[u8]) -> Result<ContactState, CodecError> {
    let r = pb::ContactStateRecord::decode(bytes).map_err(|e| CodecError::Decode(e.to_string()))?;
    if r.schema_version != SCHEMA_VERSION {
        return Err(CodecError::Version {
            found: r.schema_version,
        });
    }
    let mut recent_events: [u64; DEDUP_WINDOW] =
        r.recent_events.as_slice().try_into().map_err(|_| {
            CodecError::Invalid(format!(
                "{} recent event slots, not {DEDUP_WINDOW}",
                r.recent_events.len()
            ))
        })?;
    if r.recent_next as usize >= DEDUP_WINDOW {
        return Err(CodecError::Invalid(format!(
            "recent_next {} out of range",
            r.recent_next
        )));
    }
    // A ring whose next slot to overwrite, its oldest, is `recent_next`:
    // oldest first from there.
    recent_events.rotate_left(r.recent_next as usize);
    let mut fields: Vec<Field> = Vec::with_capacity(r.fields.len());
    for f in r.fields {
        let value = match f.value {
            Some(pb::field_record::Value::Text(t)) => FieldValue::Text(t.into()),
            Some(pb::field_record::Value::TimeMs(ms)) => FieldValue::Time(Timestamp(ms)),
            Some(pb::field_record::Value::Attribute(a)) => {
                FieldValue::Attribute(Arc::new(crate::domain::state::Attribute {
                    text: a.text.into(),
                    at: Timestamp(a.at_ms),
                }))
            }
            None => {
                return Err(CodecError::Invalid(format!(
                    "field {:?} has no value",
                    f.name
                )));
            }
        };
        fields.push((Arc::from(f.name), value));
    }
    let mut conversations: SmallVec<[ConversationState; 2]> = SmallVec::new();
    for c in r.conversations {
        let Some(ci) = defs
            .conversations
            .iter()
            .position(|d| *d.name == c.conversation)
        else {
            return Err(CodecError::Unknown {
                what: "conversation",
                name: c.conversation,
            });
        };
        let conv = &defs.conversations[ci];
        let mut active = SmallVec::new();
        for e in c.active {
            let Some(step) = conv.steps.iter().position(|s| *s.id == e.step) else {
                return Err(CodecError::Unknown {
                    what: "step",
                    name: format!("{} / {}", c.conversation, e.step),
                });
            };
            active.push(Entry {
                seq: e.seq,
                thread: conv.steps[step].thread,
                step: step as StepIdx,
                started_at: Timestamp(e.started_at_ms),
                waiting_until: time_from_pb("waiting_until_ms", e.waiting_until_ms)?,
                transitions: e.transitions,
            });
        }
        conversations.push(ConversationState {
            conversation: ci as ConvIdx,
            entries_started: c.entries_started,
            active,
        });
    }
    Ok(ContactState {
        recent_events,
        orders: orders_from_pb(r.orders)?,
        merchants: r
            .merchants
            .into_iter()
            .map(|m| {
                Ok(MerchantStats {
                    merchant: m.merchant.into(),
                    stats: orders_from_pb(m.stats)?,
                })
            })
            .collect::<Result<_, CodecError>>()?,
        subscriptions: r
            .subscriptions
            .into_iter()
            .map(|s| Subscription {
                list: s.list.into(),
                subscribed: s.subscribed,
                at: Timestamp(s.at_ms),
            })
            .collect(),
        fields: Fields::from(fields).with_sends(Some(triomphe::ThinArc::from_header_and_iter(
            (),
            r.sent_at_ms.iter().map(|&ms| Timestamp(ms)),
        ))),
        conversations,
    })
}
