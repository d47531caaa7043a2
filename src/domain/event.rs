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
    /// Profile attributes (`first_name`, `time_zone`, `tier`, ...), as text,
    /// sorted by name, each name once.
    pub attributes: Vec<(String, String)>,
}

/// The longest ids an event may carry, in bytes (contact, event, order,
/// merchant and list ids). They are keys and state: bounding them bounds every
/// record winback writes (README, "Limits").
pub const MAX_ID_BYTES: usize = 256;
/// The longest event name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// The most attributes one event may carry.
pub const MAX_ATTRIBUTES_PER_EVENT: usize = 32;
/// The most profile fields a contact's state keeps (attributes and the
/// coupon steps' fields); an event that would add one more is refused.
pub const MAX_FIELDS_PER_CONTACT: usize = 64;
/// The longest attribute name, and value, in bytes.
pub const MAX_ATTRIBUTE_NAME_BYTES: usize = 64;
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 512;

/// The most lists a contact's state keeps subscriptions for; a subscription
/// event for one more list is refused (dead letter), never another dropped:
/// a forgotten unsubscribe could let a message through.
pub const MAX_LISTS_PER_CONTACT: usize = 64;
/// The most merchants a contact's state keeps order figures for; a purchase
/// from one more replaces the merchant whose last order is the oldest.
pub const MAX_MERCHANTS_PER_CONTACT: usize = 64;

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
    #[error("`occurred_at` ({0} ms) is outside the years 0000 to 9999 (UTC)")]
    TimeOutOfRange(i64),
    #[error("field `{field}` is {len} bytes long; at most {max} are accepted")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "the contact is subscribed or unsubscribed to {0} lists, the most its state keeps; a subscription event for another list is refused"
    )]
    TooManyLists(usize),
    #[error("{0} attributes: at most {MAX_ATTRIBUTES_PER_EVENT} are accepted per event")]
    TooManyAttributes(usize),
    #[error(
        "attribute name {0:?} is not accepted: 1 to {MAX_ATTRIBUTE_NAME_BYTES} bytes of letters, digits, `_`, `-` or `.`"
    )]
    BadAttributeName(String),
    #[error(
        "attribute {name:?} is {len} bytes long; at most {MAX_ATTRIBUTE_VALUE_BYTES} are accepted"
    )]
    AttributeTooLong { name: String, len: usize },
    #[error(
        "attribute {0:?} names a field a Set Coupon Code step writes: an event may not change a coupon code or its expiry"
    )]
    CouponFieldAttribute(String),
    #[error(
        "the contact's profile has {0} fields, the most its state keeps; an attribute adding another is refused"
    )]
    TooManyFields(usize),
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
        // The decoders accept nothing else; an event built in code is held
        // to the same bounds (they keep every sum on the way to a timer exact).
        if !self.occurred_at.accepted() {
            return Err(EventError::TimeOutOfRange(self.occurred_at.0));
        }
        let fields = [
            ("event_id", Some(&self.event_id), MAX_ID_BYTES),
            ("name", Some(&self.name), MAX_NAME_BYTES),
            ("contact_id", Some(&self.contact_id), MAX_ID_BYTES),
            ("merchant_id", self.merchant_id.as_ref(), MAX_ID_BYTES),
            ("order_id", self.order_id.as_ref(), MAX_ID_BYTES),
            ("list_id", self.list_id.as_ref(), MAX_ID_BYTES),
        ];
        if self.attributes.len() > MAX_ATTRIBUTES_PER_EVENT {
            return Err(EventError::TooManyAttributes(self.attributes.len()));
        }
        for (name, value) in &self.attributes {
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
            if name.is_empty() || name.len() > MAX_ATTRIBUTE_NAME_BYTES || !name.chars().all(ok) {
                return Err(EventError::BadAttributeName(name.clone()));
            }
            if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
                return Err(EventError::AttributeTooLong {
                    name: name.clone(),
                    len: value.len(),
                });
            }
        }
        for (field, value, max) in fields {
            if let Some(v) = value
                && v.len() > max
            {
                return Err(EventError::TooLong {
                    field,
                    len: v.len(),
                    max,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> Event {
        Event {
            event_id: "e1".into(),
            name: "checkout".into(),
            contact_id: "c1".into(),
            occurred_at: Timestamp(0),
            merchant_id: Some("m1".into()),
            order_id: None,
            total_cents: None,
            list_id: None,
            attributes: Vec::new(),
        }
    }

    #[test]
    fn ids_and_names_are_bounded() {
        assert_eq!(ev().check_shape(), Ok(()));
        let mut e = ev();
        e.contact_id = "c".repeat(MAX_ID_BYTES);
        assert_eq!(e.check_shape(), Ok(()));
        e.contact_id.push('c');
        assert_eq!(
            e.check_shape(),
            Err(EventError::TooLong {
                field: "contact_id",
                len: MAX_ID_BYTES + 1,
                max: MAX_ID_BYTES
            })
        );
        let mut e = ev();
        e.name = "n".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(
            e.check_shape(),
            Err(EventError::TooLong { field: "name", .. })
        ));
        let mut e = ev();
        e.merchant_id = Some("m".repeat(MAX_ID_BYTES + 1));
        assert!(matches!(
            e.check_shape(),
            Err(EventError::TooLong {
                field: "merchant_id",
                ..
            })
        ));
    }

    #[test]
    fn attributes_are_bounded() {
        let with = |attrs: Vec<(String, String)>| Event {
            attributes: attrs,
            ..ev()
        };
        let a = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            with(vec![a("tier", "gold"), a("time.zone-2", "")]).check_shape(),
            Ok(())
        );
        for bad in [
            "",
            "has space",
            "ümlaut",
            &"n".repeat(MAX_ATTRIBUTE_NAME_BYTES + 1),
        ] {
            assert_eq!(
                with(vec![a(bad, "x")]).check_shape(),
                Err(EventError::BadAttributeName(bad.to_string())),
                "{bad:?}"
            );
        }
        assert!(matches!(
            with(vec![a("tier", &"x".repeat(MAX_ATTRIBUTE_VALUE_BYTES + 1))]).check_shape(),
            Err(EventError::AttributeTooLong { .. })
        ));
        let many = (0..=MAX_ATTRIBUTES_PER_EVENT)
            .map(|i| a(&format!("a{i}"), "x"))
            .collect();
        assert_eq!(
            with(many).check_shape(),
            Err(EventError::TooManyAttributes(MAX_ATTRIBUTES_PER_EVENT + 1))
        );
    }
}
