//! `winback inspect`: one contact explained from the local store (read-only,
//! so also while `winback run` holds it): its orders, lists, profile fields,
//! each conversation's entries with their step and wait, and its last
//! transitions. The admin server serves the same at `/contacts/{id}`.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;

use super::{CliError, Format};
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The engine config (TOML) naming the state directory and the conversations.
    #[arg(long)]
    pub config: PathBuf,
    /// The contact id.
    pub contact: String,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

pub fn run(args: &Args) -> Result<ExitCode, CliError> {
    let Some((cfg, defs)) = super::load_engine_and_definitions(&args.config) else {
        return Ok(ExitCode::from(1));
    };
    let store = Store::open_read_only(&cfg.state_dir.join("rocksdb"))
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    let Some(partitions) = store
        .partitions()
        .map_err(|e| CliError::Runtime(e.to_string()))?
    else {
        eprintln!(
            "winback inspect: the store at {} holds no partitions yet",
            cfg.state_dir.display()
        );
        return Ok(ExitCode::from(1));
    };
    let view = crate::admin::contact::view(&store, &defs, partitions, &args.contact)
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    let Some(view) = view else {
        eprintln!(
            "winback inspect: no contact {:?} in {} (partition {} of {partitions}; only the partitions this store holds are here)",
            args.contact,
            cfg.state_dir.display(),
            crate::source::partition_for_key(args.contact.as_bytes(), partitions)
        );
        return Ok(ExitCode::from(1));
    };
    match args.format {
        Format::Json => println!("{view:#}"),
        Format::Text => print!("{}", text(&view)),
    }
    Ok(ExitCode::SUCCESS)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The view for a person at a terminal.
pub fn text(v: &Value) -> String {
    let mut out = format!(
        "contact {} (partition {}, clock {})\n",
        s(&v["contact_id"]),
        s(&v["partition"]),
        s(&v["partition_clock"])
    );
    let o = &v["orders"];
    out += &format!(
        "orders: {}, total {}, last {}\n",
        s(&o["count"]),
        s(&o["total"]),
        s(&o["last_order_at"])
    );
    for l in v["subscriptions"].as_array().into_iter().flatten() {
        let state = if l["subscribed"] == Value::Bool(true) {
            "subscribed"
        } else {
            "unsubscribed"
        };
        out += &format!("list {}: {state} at {}\n", s(&l["list"]), s(&l["at"]));
    }
    if let Some(fields) = v["fields"].as_object().filter(|f| !f.is_empty()) {
        let f: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{k}={}", s(v)))
            .collect();
        out += &format!("fields: {}\n", f.join(", "));
    }
    for c in v["conversations"].as_array().into_iter().flatten() {
        let mailable = match &c["mailable"] {
            Value::Null => "no list".to_string(),
            m => format!("list {}: {}", s(&m["list"]), s(&m["status"])),
        };
        out += &format!(
            "conversation {:?}: {mailable}; entries started {}\n",
            s(&c["conversation"]),
            s(&c["entries_started"])
        );
        for e in c["active"].as_array().into_iter().flatten() {
            out += &format!(
                "  entry {}: thread {:?}, step {}, started {}, waiting until {}\n",
                s(&e["entry"]),
                s(&e["thread"]),
                s(&e["step"]),
                s(&e["started_at"]),
                s(&e["waiting_until"])
            );
        }
    }
    out += "recent transitions (oldest first):\n";
    for t in v["recent_transitions"].as_array().into_iter().flatten() {
        let mut detail = String::new();
        for key in ["reason", "step", "code", "message"] {
            if !t[key].is_null() {
                detail += &format!(" {key}={}", s(&t[key]));
            }
        }
        out += &format!(
            "  {} {:?} entry {} {}{detail}\n",
            s(&t["at"]),
            s(&t["conversation"]),
            s(&t["entry"]),
            s(&t["type"])
        );
    }
    out
}
