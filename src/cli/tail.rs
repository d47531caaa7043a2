//! `winback tail`: prints the transitions topic (or the sends or dead-letter
//! topic) as JSON lines, the form `simulate` prints.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::CliError;
use crate::wire;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Which {
    Transitions,
    Sends,
    DeadLetters,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The engine config (TOML).
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long, value_enum, default_value_t = Which::Transitions)]
    pub topic: Which,
    /// Start at the end of the topic instead of its beginning.
    #[arg(long)]
    pub follow_only: bool,
    /// Exit after printing this many records.
    #[arg(long)]
    pub max: Option<u64>,
    /// Exit after this many seconds without a new record (default: never).
    #[arg(long)]
    pub idle_exit: Option<u64>,
}

pub fn run(args: &Args) -> Result<ExitCode, CliError> {
    let Some(cfg) = super::load_engine(&args.config) else {
        return Ok(ExitCode::from(1));
    };
    let topic = match args.topic {
        Which::Transitions => &cfg.outputs.transitions,
        Which::Sends => &cfg.outputs.sends,
        Which::DeadLetters => &cfg.outputs.dead_letters,
    };
    let bootstrap = super::run::client_bootstrap(&cfg);
    let mut conf = crate::source::client_config(&cfg, &bootstrap);
    // Read-only: no group, nothing committed.
    conf.set("group.id", "winback-tail");
    conf.set("enable.auto.commit", "false");
    // Only what winback committed: an aborted batch was done again.
    conf.set("isolation.level", "read_committed");
    let consumer: BaseConsumer = conf.create().map_err(|e| CliError::Kafka(e.to_string()))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| CliError::Kafka(e.to_string()))?;
    let partitions = md
        .topics()
        .iter()
        .find(|t| t.name() == topic.as_str())
        .map_or(0, |t| t.partitions().len());
    if partitions == 0 {
        return Err(CliError::Kafka(format!(
            "topic {topic:?} does not exist on {bootstrap}"
        )));
    }
    let mut tpl = TopicPartitionList::new();
    let start = if args.follow_only {
        Offset::End
    } else {
        Offset::Beginning
    };
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, start)
            .map_err(|e| CliError::Kafka(e.to_string()))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| CliError::Kafka(e.to_string()))?;

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut printed = 0u64;
    let mut last = Instant::now();
    loop {
        if args.max.is_some_and(|m| printed >= m) {
            break;
        }
        if args
            .idle_exit
            .is_some_and(|s| last.elapsed() >= Duration::from_secs(s))
        {
            break;
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                eprintln!("winback tail: {e}");
                continue;
            }
        };
        last = Instant::now();
        let line = match args.topic {
            Which::DeadLetters => dead_letter_json(&m),
            _ => match crate::sink::decode_transition(m.payload().unwrap_or_default())
                .map_err(|e| e.to_string())
                .and_then(|t| wire::proto::transition_json(&t).map_err(|e| e.to_string()))
            {
                Ok(l) => l,
                Err(e) => {
                    eprintln!(
                        "winback tail: {topic}/{}@{}: not a transition: {e}",
                        m.partition(),
                        m.offset()
                    );
                    continue;
                }
            },
        };
        if let Err(source) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            // The reader went away (`| head`): that is the end, not an error.
            if source.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(CliError::Write {
                path: "stdout".into(),
                source,
            });
        }
        printed += 1;
    }
    Ok(ExitCode::SUCCESS)
}

fn dead_letter_json<M: Message>(m: &M) -> String {
    let h = |n| crate::sink::header(m, n).unwrap_or_default().to_string();
    serde_json::json!({
        "topic": h(crate::source::DLQ_TOPIC),
        "partition": h(crate::source::DLQ_PARTITION),
        "offset": h(crate::source::DLQ_OFFSET),
        "reason": h(crate::source::DLQ_REASON),
        "key": m.key().map(String::from_utf8_lossy),
        "value": m.payload().map(String::from_utf8_lossy),
    })
    .to_string()
}
