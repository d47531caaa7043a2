//! `winback produce`: publishes a JSON-lines file of events to an input topic,
//! in that topic's format, keyed by contact id.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::Message;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::CliError;
use crate::config::engine::{EngineConfig, InputFormat};
use crate::domain::Event;
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

/// Counts the records the brokers refused: a flush only says the queue is
/// empty, not that everything in it arrived.
#[derive(Default)]
struct Refused {
    count: Mutex<(u64, Option<String>)>,
}

impl ClientContext for Refused {}

impl ProducerContext for Refused {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result
            && let Ok(mut c) = self.count.lock()
        {
            c.0 += 1;
            c.1.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Waits for `topic` to exist, as long as librdkafka waits for a missing
/// topic's metadata (`topic.metadata.propagation.max.ms`, 30 s by default),
/// asking through a consumer, whose metadata requests create nothing.
fn wait_for_topic(
    cfg: &crate::config::engine::EngineConfig,
    bootstrap: &str,
    topic: &str,
) -> Result<(), CliError> {
    let wait = cfg
        .kafka
        .get("topic.metadata.propagation.max.ms")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(30), Duration::from_millis);
    let mut conf = crate::source::client_config(cfg, bootstrap);
    conf.set("allow.auto.create.topics", "false");
    let probe: BaseConsumer = conf.create().map_err(|e| CliError::Kafka(e.to_string()))?;
    let deadline = Instant::now() + wait;
    loop {
        let last = match probe.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(m) => match m.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => return Ok(()),
                Some(t) => format!("{:?}", t.error()),
                None => "not in the metadata".to_string(),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(CliError::Kafka(format!(
                "topic {topic} does not exist on {bootstrap} (waited {wait:?}; last answer: {last}); \
                 winback run creates its topics on the embedded broker, elsewhere create them first"
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The input topic named (default: the config's first) and its format;
/// `None`, reported, for a topic the config does not read.
pub(super) fn input_topic(
    cfg: &EngineConfig,
    topic: Option<&str>,
    config: &std::path::Path,
) -> Option<(String, InputFormat)> {
    let topic = topic.map_or_else(|| cfg.inputs[0].topic.clone(), str::to_string);
    match cfg.input_format(&topic) {
        Some(format) => Some((topic, format)),
        None => {
            eprintln!("{topic:?} is not an input topic of {}", config.display());
            None
        }
    }
}

/// Publishes `events` to the input topic `topic` in its `format`, keyed by
/// contact id, idempotently, and waits for every acknowledgement. Returns
/// how many were sent and the brokers' address.
pub(super) fn publish(
    cfg: &EngineConfig,
    topic: &str,
    format: InputFormat,
    events: impl Iterator<Item = Result<Event, CliError>>,
) -> Result<(u64, String), CliError> {
    let bootstrap = super::run::client_bootstrap(cfg);
    let mut conf = crate::source::client_config(cfg, &bootstrap);
    conf.set("enable.idempotence", "true");
    // Kafka's Java producer's rule, which winback checks records against
    // (README, "Input"); librdkafka's default hashes keys another way.
    if !cfg.kafka.contains_key("partitioner") {
        conf.set("partitioner", "murmur2_random");
    }
    if !cfg.kafka.contains_key("allow.auto.create.topics") {
        conf.set("allow.auto.create.topics", "false");
    }
    // A topic `winback run` has not created yet is waited for, not created
    // by the broker with its default partition count (which `winback run`
    // would then refuse). The producer's own metadata requests may still ask
    // the broker to create it (noida-db does), so it starts only once the
    // topic is there.
    wait_for_topic(cfg, &bootstrap, topic)?;
    let producer: BaseProducer<Refused> = conf
        .create_with_context(Refused::default())
        .map_err(|e| CliError::Kafka(e.to_string()))?;
    let mut sent = 0u64;
    for ev in events {
        let ev = ev?;
        let value = match format {
            InputFormat::Json => wire::json::encode_event(&ev).into_bytes(),
            InputFormat::Protobuf => wire::proto::event_to_pb(&ev).encode_to_vec(),
        };
        let mut rec = BaseRecord::to(topic)
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
    if let Ok(c) = producer.context().count.lock()
        && c.0 > 0
    {
        return Err(CliError::Kafka(format!(
            "{} of {sent} event(s) were not acknowledged: {}",
            c.0,
            c.1.as_deref().unwrap_or("no reason given")
        )));
    }
    Ok((sent, bootstrap))
}

pub fn run(args: &Args) -> Result<ExitCode, CliError> {
    let Some(cfg) = super::load_engine(&args.config) else {
        return Ok(ExitCode::from(1));
    };
    let Some((topic, format)) = input_topic(&cfg, args.topic.as_deref(), &args.config) else {
        return Ok(ExitCode::from(1));
    };
    let file = std::fs::File::open(&args.events).map_err(|source| CliError::Read {
        path: args.events.clone(),
        source,
    })?;
    let mut bad = 0u64;
    let events = super::event_lines(file, &args.events).filter_map(|line| {
        let (lineno, line) = match line {
            Ok(l) => l,
            Err(e) => return Some(Err(e)),
        };
        match wire::json::decode_event(&line) {
            Ok(ev) => Some(Ok(ev)),
            Err(e) => {
                eprintln!("{}:{lineno}: {e} (not sent)", args.events.display());
                bad += 1;
                None
            }
        }
    });
    let (sent, bootstrap) = publish(&cfg, &topic, format, events)?;
    eprintln!(
        "produced {sent} event(s) to {topic} on {bootstrap}; {bad} malformed line(s) not sent"
    );
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
