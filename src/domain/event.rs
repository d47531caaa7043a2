//! The input events the engine folds, already decoded from JSON or protobuf.

use super::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event_id: String,
    pub name: String,
    pub contact_id: String,
    pub occurred_at: Timestamp,
    pub merchant_id: Option<String>,
    pub order_id: Option<String>,
    /// Minor units (cents); JSON carries a decimal `total` that is rounded to cents.
    pub total_cents: Option<i64>,
    pub list_id: Option<String>,
}

/// Why an event was refused before it touched any state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("field `{0}` is empty")]
    Empty(&'static str),
    #[error("event `{name}` is a subscription event and needs `list_id`")]
    MissingListId { name: String },
    #[error(
        "`contact_id` must not contain NUL characters (keys starting with NUL are winback's own)"
    )]
    NulInContactId,
    #[error("`total` must not be negative")]
    NegativeTotal,
    /// Only the in-memory simulator has such a limit: contacts are numbered
    /// with 32 bits.
    #[error("the simulator holds {0} contacts, the most it can: a new contact cannot be added")]
    TooManyContacts(u32),
}

/// A decimal amount in cents, rounded to the nearest cent; `None` unless it is
/// finite, non-negative and fits (amounts are compared and summed in cents).
pub fn amount_to_cents(amount: f64) -> Option<i64> {
    ((0.0..9.0e16).contains(&amount)).then(|| (amount * 100.0).round() as i64)
}

impl Event {
    /// Checks that hold for every event whatever the definitions say.
    pub fn check_shape(&self) -> Result<(), EventError> {
        if self.event_id.is_empty() {
            return Err(EventError::Empty("event_id"));
        }
        if self.name.is_empty() {
            return Err(EventError::Empty("name"));
        }
        if self.contact_id.is_empty() {
            return Err(EventError::Empty("contact_id"));
        }
        if self.contact_id.contains('\0') {
            return Err(EventError::NulInContactId);
        }
        if self.total_cents.is_some_and(|t| t < 0) {
            return Err(EventError::NegativeTotal);
        }
        Ok(())
    }
}
