//! `winback reprocess`: re-derives transitions from the input topics' history
//! with event time, from nothing (a fresh state per partition in a scratch
//! RocksDB store), to a separate topic, a file, or only a summary. It reads
//! the input topics (committed records, up to their end when it starts) and
//! never writes the live output topics unless `--allow-live-topic` says so.
//!
//! Each input partition is processed on its own, as `winback run` would: its
//! records in offset order, several input topics merged by event time (ties:
//! the topic listed first) as they stream in, by the merge `run` uses, with
//! bounded buffers (memory does not grow with the history), with that
//! partition's share of the coupon pools.
//! The output is therefore a function of the input and the definitions:
//! reprocessing the same input twice gives byte-identical records.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::CliError;
use super::simulate::Summary;
use crate::config::engine::EngineConfig;
use crate::domain::{Definitions, Folded, Timestamp, Transition};
use crate::runtime::partition::{Fed, Partition, PartitionError, PartitionSettings};
use crate::sink::{Sink, transition_record};
use crate::store::Store;

/// Marks every record `reprocess` writes.
pub const HEADER_REPROCESS: &str = "winback.reprocess";

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("start").required(true).args(["from_beginning", "from"])))]
pub struct Args {
    /// The engine config: brokers, input topics, conversations.
    #[arg(long)]
    pub config: PathBuf,
    /// Read the input topics from their first record.
    #[arg(long)]
    pub from_beginning: bool,
    /// Read the input records appended at or after this RFC 3339 instant.
    #[arg(long)]
    pub from: Option<String>,
    /// After the input, advance each partition's clock to this RFC 3339
    /// instant, firing the waits due by then (default: no further than the
    /// partition's last event, so the output depends on the input only).
    #[arg(long)]
    pub until: Option<String>,
    /// Produce the transitions to this topic (it must exist). Without it,
    /// nothing is produced: a dry run.
    #[arg(long)]
    pub output_topic: Option<String>,
    /// Allow `--output-topic` to be one of the live topics of the config.
    #[arg(long)]
    pub allow_live_topic: bool,
    /// Write the transitions as JSON lines to this file (`-`: stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A scratch store, deleted when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn parse_time(flag: &str, v: &str) -> Result<Timestamp, CliError> {
    Timestamp::parse_rfc3339(v).map_err(|reason| CliError::Until {
        value: format!("{flag} {v}"),
        reason,
    })
}

pub fn run(args: &Args) -> Result<ExitCode, CliError> {
    let Some((cfg, defs)) = super::load_engine_and_definitions(&args.config) else {
        return Ok(ExitCode::from(1));
    };
    let from = args
        .from
        .as_deref()
        .map(|f| parse_time("--from", f))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|u| parse_time("--until", u))
        .transpose()?;
    if let Some(t) = &args.output_topic {
        let live = [
            &cfg.outputs.transitions,
            &cfg.outputs.sends,
            &cfg.outputs.dead_letters,
            &cfg.outputs.changelog,
        ];
        if cfg.inputs.iter().any(|i| &i.topic == t) {
            eprintln!("winback reprocess: --output-topic {t:?} is an input topic");
            return Ok(ExitCode::from(1));
        }
        if live.contains(&t) && !args.allow_live_topic {
            eprintln!(
                "winback reprocess: --output-topic {t:?} is a live output topic of {}; add --allow-live-topic to write to it anyway",
                args.config.display()
            );
            return Ok(ExitCode::from(1));
        }
    }
    let bootstrap = super::run::client_bootstrap(&cfg);
    let kafka_err = |e: KafkaError| CliError::Kafka(e.to_string());
    let consumer: BaseConsumer<crate::source::Reader> =
        crate::source::reader_config(&cfg, &bootstrap)
            .create_with_context(crate::source::Reader)
            .map_err(kafka_err)?;
    let start_err = |e: crate::runtime::RuntimeError| CliError::Kafka(e.to_string());
    let partitions =
        crate::runtime::checks::input_partitions(&consumer, &cfg, &[]).map_err(start_err)?;
    let out_partitions = match &args.output_topic {
        Some(t) => Some(crate::runtime::checks::topic_partitions(&consumer, t).map_err(start_err)?),
        None => None,
    };

    let scratch =
        Scratch(std::env::temp_dir().join(format!("winback-reprocess-{}", std::process::id())));
    let store = Store::open(&scratch.0).map_err(|e| CliError::Runtime(e.to_string()))?;
    let mut sink = match &args.output_topic {
        Some(_) => {
            Some(Sink::new(&cfg, &bootstrap, None).map_err(|e| CliError::Runtime(e.to_string()))?)
        }
        None => None,
    };
    let mut file: Option<Box<dyn Write>> = match args.out.as_deref() {
        None => None,
        Some(p) if p == Path::new("-") => {
            Some(Box::new(std::io::BufWriter::new(std::io::stdout().lock())))
        }
        Some(p) => Some(Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|source| CliError::Write {
                path: p.display().to_string(),
                source,
            })?,
        ))),
    };
    let write_err = |source| CliError::Write {
        path: args
            .out
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string()),
        source,
    };

    let mut summary = Summary::default();
    let mut coupons = 0u64;
    let mut last_clock = None;
    for p in 0..partitions {
        let mut written = 0usize;
        let mut emit = |t: &Transition, summary: &mut Summary| -> Result<(), CliError> {
            summary.count(&defs, t, p);
            if t.kind.type_name() == "coupon_assigned" {
                coupons += 1;
            }
            if let Some(f) = file.as_mut() {
                writeln!(f, "{}", crate::wire::json::encode_transition(&defs, t))
                    .map_err(write_err)?;
            }
            if let (Some(sink), Some(topic), Some(n)) =
                (sink.as_mut(), args.output_topic.as_deref(), out_partitions)
            {
                let mut rec = transition_record(&defs, t, topic);
                rec.partition = Some((p % n) as i32);
                rec.headers
                    .push((HEADER_REPROCESS.to_string(), b"true".to_vec()));
                sink.send(rec);
                written += 1;
                // Bounded memory: what is sent is held until acknowledged.
                if written.is_multiple_of(SINK_CHUNK) {
                    sink.finish(&AtomicBool::new(false))
                        .map_err(|e| CliError::Runtime(e.to_string()))?;
                }
            }
            Ok(())
        };
        let clock = process_partition(
            &consumer,
            &cfg,
            &store,
            &defs,
            (p, partitions),
            (from, until),
            &mut summary,
            &mut emit,
        )?;
        last_clock = last_clock.max(clock);
        if let Some(sink) = sink.as_mut() {
            sink.finish(&AtomicBool::new(false))
                .map_err(|e| CliError::Runtime(e.to_string()))?;
        }
    }
    if let Some(f) = file.as_mut() {
        f.flush().map_err(write_err)?;
    }
    summary.print(&defs, last_clock);
    match &args.output_topic {
        Some(t) => eprintln!("written to {t}"),
        None => eprintln!("dry run: nothing produced (--output-topic T writes the transitions)"),
    }
    if coupons > 0 {
        eprintln!(
            "note: {coupons} coupon code(s) above were drawn as if the pools were unused; live runs may have handed out the same codes - do not mail them"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Records one input topic may hold in the merge before its fetching
/// pauses; and transitions produced between two waits for acknowledgements.
const MERGE_BUFFER: usize = 10_000;
const SINK_CHUNK: usize = 50_000;

/// Where input topic `topic`'s partition `p` starts (`from`: the first
/// record appended at or after it), and its end; None when there is nothing
/// to read.
fn start_and_end(
    consumer: &BaseConsumer<crate::source::Reader>,
    topic: &str,
    p: i32,
    from: Option<Timestamp>,
) -> Result<Option<(Offset, i64)>, CliError> {
    let kafka_err = |e: KafkaError| CliError::Kafka(e.to_string());
    let start = match from {
        None => Offset::Beginning,
        Some(t) => {
            let mut q = TopicPartitionList::new();
            q.add_partition_offset(topic, p, Offset::Offset(t.0))
                .map_err(kafka_err)?;
            let found = consumer
                .offsets_for_times(q, Duration::from_secs(10))
                .map_err(kafka_err)?;
            found
                .find_partition(topic, p)
                .map_or(Offset::End, |e| match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => Offset::End,
                })
        }
    };
    let (_, high) = consumer
        .fetch_watermarks(topic, p, Duration::from_secs(10))
        .map_err(kafka_err)?;
    Ok((high > 0 && start != Offset::End).then_some((start, high)))
}

/// Partition `p` of every input topic, read as it streams in (buffers
/// bounded: a topic running ahead pauses), merged by event time by the merge
/// `run` uses, folded from nothing; each transition goes to `emit` as it is
/// made. Returns the partition's final clock.
#[allow(clippy::too_many_arguments)]
fn process_partition(
    consumer: &BaseConsumer<crate::source::Reader>,
    cfg: &EngineConfig,
    store: &Store,
    defs: &Arc<Definitions>,
    (p, partitions): (u32, u32),
    (from, until): (Option<Timestamp>, Option<Timestamp>),
    summary: &mut Summary,
    emit: &mut dyn FnMut(&Transition, &mut Summary) -> Result<(), CliError>,
) -> Result<Option<Timestamp>, CliError> {
    let kafka_err = |e: KafkaError| CliError::Kafka(e.to_string());
    let err = |e: String| CliError::Runtime(e);
    let n = cfg.inputs.len();
    let mut ends: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut tpl = TopicPartitionList::new();
    for input in &cfg.inputs {
        let found = start_and_end(consumer, &input.topic, p as i32, from)?;
        if let Some((start, _)) = found {
            tpl.add_partition_offset(&input.topic, p as i32, start)
                .map_err(kafka_err)?;
        }
        ends.push(found.map(|(_, high)| high));
    }
    // A topic is done once read to the end it had when reprocess started.
    let mut done: Vec<bool> = ends.iter().map(Option::is_none).collect();
    let mut paused = vec![false; n];
    consumer.assign(&tpl).map_err(kafka_err)?;
    let mut part = Partition::open(
        store,
        Arc::clone(defs),
        p,
        partitions,
        PartitionSettings::default(),
    )
    .map_err(|e| err(e.to_string()))?;
    let mut merge = crate::runtime::merge::Merge::new(n);
    let mut unlimited = usize::MAX;
    let mut out = Vec::new();
    let mut folded = 0usize;
    loop {
        // Fold what the merge lets go: every topic has a head or is done.
        while let Some(t) = merge.next(p, std::time::Instant::now(), Duration::ZERO, |t, _| {
            if done[t] {
                crate::runtime::merge::End::Reached
            } else {
                crate::runtime::merge::End::Behind
            }
        }) {
            let Some(b) = merge.pop(p, t) else { break };
            let topic = &cfg.inputs[t].topic;
            let ev = match b.record {
                Ok(ev) => ev,
                Err((rejected, _, _)) => {
                    summary.malformed += 1;
                    eprintln!(
                        "{topic}[{p}] offset {}: skipped: {}",
                        b.offset, rejected.reason
                    );
                    continue;
                }
            };
            let fed = part.feed(store, &ev, &mut out, &mut unlimited);
            match &fed {
                Ok(Fed::Folded(Folded::Applied)) => summary.folded += 1,
                Ok(Fed::Folded(Folded::Forgotten)) => {
                    summary.folded += 1;
                    summary.forgotten += 1;
                }
                Ok(Fed::Folded(Folded::Unrouted)) => {
                    summary.folded += 1;
                    *summary.unrouted.entry(ev.name.clone()).or_default() += 1;
                }
                Ok(Fed::Folded(Folded::Duplicate)) => summary.duplicates += 1,
                Ok(Fed::Paused) => return Err(err("paused without a timer budget".into())),
                Err(PartitionError::Event(e)) => {
                    summary.malformed += 1;
                    eprintln!("partition {p}: event {:?} skipped: {e}", ev.event_id);
                }
                Err(PartitionError::Store(e)) => return Err(err(e.to_string())),
            }
            for tr in out.drain(..) {
                emit(&tr, summary)?;
            }
            if matches!(fed, Ok(Fed::Folded(Folded::Applied))) {
                summary.folded(defs, &ev, p);
            }
            folded += 1;
            // Bounded memory: the scratch store takes the state every so often.
            if folded.is_multiple_of(20_000) {
                let mut batch = store.batch(defs, p);
                part.write(&mut batch);
                batch.commit().map_err(|e| err(e.to_string()))?;
            }
            if paused[t] && merge.len(p, t) <= MERGE_BUFFER / 2 {
                let mut one = TopicPartitionList::new();
                one.add_partition(topic, p as i32);
                consumer.resume(&one).map_err(kafka_err)?;
                paused[t] = false;
            }
        }
        if done.iter().all(|d| *d) && !merge.holds(p) {
            break;
        }
        let polled = consumer.poll(Duration::from_millis(200));
        match polled {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {
                // Read to the end (a transaction marker or aborted records
                // may end the log, past the last record read).
                if let Ok(pos) = consumer.position() {
                    for (t, input) in cfg.inputs.iter().enumerate() {
                        let at = pos.find_partition(&input.topic, p as i32).and_then(|e| {
                            match e.offset() {
                                Offset::Offset(o) => Some(o),
                                _ => None,
                            }
                        });
                        if let (Some(at), Some(end)) = (at, ends[t])
                            && at >= end
                        {
                            done[t] = true;
                        }
                    }
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "input read error"),
            Some(Ok(m)) => {
                let Some(t) = cfg.inputs.iter().position(|i| i.topic == m.topic()) else {
                    continue;
                };
                summary.lines += 1;
                let record = crate::source::decode(cfg.inputs[t].format, m.payload())
                    .and_then(|ev| {
                        crate::source::check_record(
                            &ev,
                            m.key(),
                            m.timestamp().to_millis(),
                            cfg.time.max_future_skew,
                        )
                        .map(|()| ev)
                    })
                    .map_err(|r| (r, Vec::new(), Vec::new()));
                if ends[t].is_some_and(|end| m.offset() + 1 >= end) {
                    done[t] = true;
                }
                let offset = m.offset();
                if ends[t].is_none_or(|end| offset < end) {
                    merge.push(p, t, crate::runtime::merge::Buffered { offset, record });
                }
                if !paused[t] && merge.len(p, t) >= MERGE_BUFFER {
                    let mut one = TopicPartitionList::new();
                    one.add_partition(&cfg.inputs[t].topic, p as i32);
                    consumer.pause(&one).map_err(kafka_err)?;
                    paused[t] = true;
                }
            }
        }
    }
    consumer.unassign().map_err(kafka_err)?;
    summary.late += part.late_events();
    if let Some(u) = until {
        part.advance_to(store, u, &mut out, &mut unlimited)
            .map_err(|e| err(e.to_string()))?;
        for tr in out.drain(..) {
            emit(&tr, summary)?;
        }
    }
    let mut batch = store.batch(defs, p);
    part.write(&mut batch);
    batch.commit().map_err(|e| err(e.to_string()))?;
    Ok(part.clock())
}
