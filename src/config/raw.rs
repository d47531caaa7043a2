//! The definition file format exactly as written, with the span of every value
//! so that validation can point at it. README.md documents each key.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub conversation: Option<Spanned<RawConversation>>,
    #[serde(default)]
    pub thread: Vec<Spanned<RawThread>>,
    #[serde(default)]
    pub coupon_pool: Vec<Spanned<RawPool>>,
    /// At most one among the loaded files.
    pub frequency_cap: Option<Spanned<RawCap>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCap {
    pub messages: u32,
    pub per: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConversation {
    pub name: Spanned<String>,
    /// Free text, e.g. "Winback" (Listrak's campaign type); carried for reporting.
    pub campaign: Option<String>,
    pub list: Option<Spanned<String>>,
    /// Default false: a contact enters at most once, ever.
    pub allow_unlimited_entries: Option<Spanned<bool>>,
    /// `restart` (default) or `parallel`; only with unlimited entries.
    pub reentry: Option<Spanned<String>>,
    /// Parallel mode: entries per contact before the oldest is exited. Default 16.
    pub max_parallel_entries: Option<Spanned<u32>>,
    /// Default `["checkout"]`.
    pub purchase_events: Option<Spanned<Vec<String>>>,
    /// Default `["subscribe"]`.
    pub subscribe_events: Option<Spanned<Vec<String>>>,
    /// Default `["unsubscribe"]`.
    pub unsubscribe_events: Option<Spanned<Vec<String>>>,
    /// Events that end every entry of the conversation. Default none.
    pub exit_events: Option<Spanned<Vec<String>>>,
    /// Events that only set profile attributes. Default none.
    pub profile_events: Option<Spanned<Vec<String>>>,
    /// IANA zone of contacts whose profile names none. Default `UTC`.
    pub time_zone: Option<Spanned<String>>,
    /// The profile field naming a contact's zone. Default `time_zone`.
    pub time_zone_field: Option<Spanned<String>>,
    /// When the conversation's message steps may send. Default: any time.
    pub send_window: Option<Spanned<RawSendWindow>>,
    /// Share of contacts (0 to 1) whose messages are held out. Default 0.
    pub holdout: Option<Spanned<f64>>,
    /// Salts the holdout's and split steps' draws. Default "".
    pub experiment_salt: Option<Spanned<String>>,
    /// Conversions counted this long after a message. Default 7d.
    pub attribution_window: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBranch {
    pub name: String,
    /// Default 1.
    pub weight: Option<u32>,
    pub target: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSendWindow {
    /// `mon` .. `sun`; default every day.
    pub days: Option<Vec<String>>,
    /// `HH:MM`, local.
    pub from: String,
    /// `HH:MM` (up to `24:00`), local, exclusive.
    pub to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThread {
    pub name: Spanned<String>,
    /// Default 1; among threads triggered by the same event the lowest wins.
    pub rank: Option<Spanned<i64>>,
    pub events: Option<Spanned<Vec<String>>>,
    pub no_events_required: Option<Spanned<bool>>,
    /// Events that end an entry while it is in this thread. Default none.
    pub exit_events: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub step: Vec<Spanned<RawStep>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub id: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub duration: Option<Spanned<String>>,
    pub target: Option<Spanned<String>>,
    pub filter: Option<Spanned<RawFilter>>,
    pub action: Option<Spanned<String>>,
    pub pool: Option<Spanned<String>>,
    pub field: Option<Spanned<String>>,
    pub expiration_field: Option<Spanned<String>>,
    pub valid_for: Option<Spanned<String>>,
    pub when_exhausted: Option<Spanned<String>>,
    pub message: Option<Spanned<String>>,
    pub send_window: Option<Spanned<RawSendWindow>>,
    pub branches: Option<Spanned<Vec<RawBranch>>>,
    pub cadence: Option<Spanned<RawCadence>>,
    /// `suppress` (default) or `wait`.
    pub when_capped: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCadence {
    /// Default 1: the expected date of the next order.
    pub factor: Option<f64>,
    pub min: String,
    pub max: String,
    /// For a contact with fewer than two orders.
    pub fallback: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    pub merchant: Option<Spanned<String>>,
    pub last_order_before: Option<Spanned<String>>,
    pub last_order_after: Option<Spanned<String>>,
    pub min_orders: Option<Spanned<u64>>,
    pub max_orders: Option<Spanned<u64>>,
    pub min_total_spent: Option<Spanned<f64>>,
    pub max_total_spent: Option<Spanned<f64>>,
    pub subscribed_to: Option<Spanned<String>>,
    /// Profile field name → its condition.
    pub profile: Option<std::collections::BTreeMap<String, Spanned<RawProfileTest>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfileTest {
    pub equals: Option<String>,
    #[serde(rename = "in")]
    pub one_of: Option<Vec<String>>,
    pub exists: Option<bool>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub name: Spanned<String>,
    /// One code per line; relative paths are relative to the definition file.
    pub codes_file: Spanned<String>,
    /// Default: a tenth of the pool, at least 1.
    pub low_stock: Option<Spanned<u64>>,
    /// RFC 3339; the expiration of every code unless the step sets `valid_for`.
    pub expires_at: Option<Spanned<String>>,
}
