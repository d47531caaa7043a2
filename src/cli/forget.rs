//! `winback forget`: erases a contact (a privacy request) by publishing a
//! `forget` event for it to an input topic. It goes the way of every event:
//! the partition holding the contact folds it in order, deletes the
//! contact's state, waits and history, tombstones its changelog record and
//! emits `forgotten` transitions, in one transaction with everything else.

use std::path::PathBuf;
use std::process::ExitCode;

use super::CliError;
use crate::domain::Timestamp;
use crate::domain::definition::FORGET_EVENT;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The engine config (TOML): brokers, topics and their formats.
    #[arg(long)]
    pub config: PathBuf,
    /// The contact id to erase.
    pub contact: String,
    /// When the request took effect (RFC 3339; default: now). Events stamped
    /// after it are a new contact's.
    #[arg(long)]
    pub at: Option<String>,
    /// The input topic to publish to (default: the first in the config).
    #[arg(long)]
    pub topic: Option<String>,
}

pub fn run(args: &Args) -> Result<ExitCode, CliError> {
    let Some(cfg) = super::load_engine(&args.config) else {
        return Ok(ExitCode::from(1));
    };
    let at = match &args.at {
        Some(a) => Timestamp::parse_rfc3339(a).map_err(|reason| CliError::Flag {
            flag: "--at",
            value: a.clone(),
            reason,
        })?,
        None => Timestamp(chrono::Utc::now().timestamp_millis()),
    };
    let Some((topic, format)) =
        super::produce::input_topic(&cfg, args.topic.as_deref(), &args.config)
    else {
        return Ok(ExitCode::from(1));
    };
    let line = serde_json::json!({
        "event_id": format!("{FORGET_EVENT}-{}-{}", args.contact, at.0),
        "name": FORGET_EVENT,
        "contact_id": args.contact,
        "occurred_at": at.to_string(),
    })
    .to_string();
    let ev = crate::wire::json::decode_event(&line).map_err(|e| CliError::Flag {
        flag: "CONTACT",
        value: args.contact.clone(),
        reason: e.to_string(),
    })?;
    let (_, bootstrap) = super::produce::publish(&cfg, &topic, format, std::iter::once(Ok(ev)))?;
    eprintln!(
        "published a {FORGET_EVENT} event for {:?} at {at} to {topic} on {bootstrap}: the process holding its partition erases it with its next batch",
        args.contact
    );
    Ok(ExitCode::SUCCESS)
}
