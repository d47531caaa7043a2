//! `winback produce`: publishes a JSON-lines file of events to an input topic,
//! in that topic's format, keyed by contact id.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use prost::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::CliError;
use crate::config::engine::InputFormat;
use crate::wire;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The engine config (TOML): brokers, topics and their formats.
    #[arg(long)]
    pub config: PathBuf,
    /// JSON lines, one event per line.
    #[arg(long)]
    pub events: PathBuf,
    /// The input topic to publish to (default: the first in the config).
    #[arg(long)]
    pub topic: Option<String>,
}

pub fn run(args: &Args) -> Result<ExitCode, CliError> {
    let Some(cfg) = super::load_engine(&args.config) else {
        return Ok(ExitCode::from(1));
    };
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| cfg.inputs[0].topic.clone());
    let Some(format) = cfg.input_format(&topic) else {
        eprintln!(
            "{topic:?} is not an input topic of {}",
            args.config.display()
        );
        return Ok(ExitCode::from(1));
    };
    let file = std::fs::File::open(&args.events).map_err(|source| CliError::Read {
        path: args.events.clone(),
        source,
    })?;
    let bootstrap = super::run::client_bootstrap(&cfg);
    let mut conf = crate::source::client_config(&cfg, &bootstrap);
    conf.set("enable.idempotence", "true");
    let producer: BaseProducer = conf.create().map_err(|e| CliError::Kafka(e.to_string()))?;
    let (mut sent, mut bad) = (0u64, 0u64);
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| CliError::Read {
            path: args.events.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let ev = match wire::json::decode_event(&line) {
            Ok(ev) => ev,
            Err(e) => {
                eprintln!("{}:{}: {e} (not sent)", args.events.display(), n + 1);
                bad += 1;
                continue;
            }
        };
        let value = match format {
            InputFormat::Json => wire::json::encode_event(&ev).into_bytes(),
            InputFormat::Protobuf => wire::proto::event_to_pb(&ev).encode_to_vec(),
        };
        let mut rec = BaseRecord::to(&topic)
            .key(ev.contact_id.as_bytes())
            .payload(&value);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((e, r)) => {
                    if !matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ) {
                        return Err(CliError::Kafka(e.to_string()));
                    }
                    rec = r;
                    producer.poll(Duration::from_millis(50));
                }
            }
        }
        producer.poll(Duration::ZERO);
        sent += 1;
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| CliError::Kafka(format!("not every event was acknowledged: {e}")))?;
    eprintln!(
        "produced {sent} event(s) to {topic} on {bootstrap}; {bad} malformed line(s) not sent"
    );
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
