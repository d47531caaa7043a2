//! One contact, explained: what the store holds of it, with the definitions'
//! names, and its last transitions, so that "why did (or didn't) this
//! contact get the winback email?" has an answer on one screen. Served by
//! the admin server (`GET /contacts/{id}`) and printed by `winback inspect`.

use prost::Message;
use serde_json::{Value, json};

use crate::domain::Timestamp;
use crate::domain::definition::Definitions;
use crate::domain::state::{ContactState, FieldValue};
use crate::domain::transition::SuppressReason;
use crate::pb;
use crate::store::rocks::{Store, StoreError};

fn time(t: Option<Timestamp>) -> Value {
    t.map_or(Value::Null, |t| Value::String(t.to_string()))
}

/// The contact's view, or `None` when the store knows nothing of it.
/// `partitions` is the input partition count, which places the contact.
pub fn view(
    store: &Store,
    defs: &Definitions,
    partitions: u32,
    id: &str,
) -> Result<Option<Value>, StoreError> {
    let partition = crate::source::partition_for_key(id.as_bytes(), partitions);
    let state = store.contact(defs, partition, id)?;
    let history = store.history(partition, id)?;
    if state.is_none() && history.is_empty() {
        return Ok(None);
    }
    let st = state.unwrap_or_default();
    let recent: Vec<Value> = history
        .iter()
        .map(|bytes| {
            pb::Transition::decode(bytes.as_slice())
                .ok()
                .and_then(|t| crate::wire::proto::transition_json(&t).ok())
                .and_then(|line| serde_json::from_str(&line).ok())
                .unwrap_or_else(|| json!({"undecodable": bytes.len()}))
        })
        .collect();
    Ok(Some(json!({
        "contact_id": id,
        "partition": partition,
        "partition_clock": time(store.clock(partition)?),
        "orders": {
            "count": st.orders.count,
            "total": format!("{:.2}", st.orders.total_cents as f64 / 100.0),
            "last_order_at": time(st.orders.last_order_at.get()),
        },
        "merchants": st.merchants.iter().map(|m| json!({
            "merchant": m.merchant.as_str(),
            "orders": m.stats.count,
            "last_order_at": time(m.stats.last_order_at.get()),
        })).collect::<Vec<_>>(),
        "subscriptions": st.subscriptions.iter().map(|s| json!({
            "list": s.list.as_str(),
            "subscribed": s.subscribed,
            "at": s.at.to_string(),
        })).collect::<Vec<_>>(),
        "fields": st.fields.as_slice().iter().map(|(k, v)| {
            let v = match v {
                FieldValue::Text(t) => Value::String(t.to_string()),
                FieldValue::Time(t) => Value::String(t.to_string()),
                FieldValue::Attribute(a) => {
                    json!({"value": &*a.text, "set_at": a.at.to_string()})
                }
            };
            (k.to_string(), v)
        }).collect::<serde_json::Map<_, _>>(),
        "conversations": conversations(defs, &st),
        "recent_transitions": recent,
    })))
}

/// Per conversation: whether the contact may be mailed (its list), and each
/// entry under way with its thread, step and wait.
fn conversations(defs: &Definitions, st: &ContactState) -> Vec<Value> {
    defs.conversations
        .iter()
        .enumerate()
        .map(|(i, conv)| {
            let cs = st
                .conversations
                .iter()
                .find(|c| c.conversation as usize == i);
            let list = conv.list.as_deref().map(|list| {
                let status = match st.subscription(list) {
                    Some(s) if s.subscribed => "subscribed",
                    Some(_) => SuppressReason::Unsubscribed.as_str(),
                    None => SuppressReason::NotSubscribed.as_str(),
                };
                json!({"list": list, "status": status})
            });
            let active: Vec<Value> = cs
                .map(|c| {
                    c.active
                        .iter()
                        .map(|e| {
                            let thread = conv.threads.get(e.thread as usize);
                            let step = conv.steps.get(e.step as usize);
                            json!({
                                "entry": e.seq,
                                "thread": thread.map(|t| t.name.to_string()),
                                "step": step.map(|s| s.id.to_string()),
                                "started_at": e.started_at.to_string(),
                                "waiting_until": time(e.waiting_until.get()),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "conversation": conv.name.to_string(),
                "entries_started": cs.map_or(0, |c| c.entries_started),
                "mailable": list.unwrap_or(Value::Null),
                "active": active,
            })
        })
        .collect()
}
