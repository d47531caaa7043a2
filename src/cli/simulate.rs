use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::Datelike;

use super::{CliError, Format};
use crate::domain::{Event, EventError, Folded, Timestamp, Transition, TransitionKind};
use crate::sim::Simulator;
use crate::wire;

/// Events folded together: enough for the fold's prefetching to pay off
/// (it primes a dozen events ahead), few enough to hold in memory.
const BATCH: usize = 1024;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Definition files (TOML).
    #[arg(long = "config", required = true, num_args = 1..)]
    pub config: Vec<PathBuf>,
    /// JSON lines, processed in file order (the clock never goes back).
    #[arg(long)]
    pub events: PathBuf,
    /// After the last event, advance the clock to this RFC 3339 instant,
    /// firing every wait due by then.
    #[arg(long)]
    pub until: Option<String>,
    /// Write transitions here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Stop at the first malformed event line instead of reporting and skipping it.
    #[arg(long)]
    pub strict: bool,
    /// A line stamped more than this after `--until` (without `--until`:
    /// after the wall clock when simulate starts) is reported and skipped,
    /// as `run` dead-letters an event stamped this far after its record.
    #[arg(long, default_value = "1h")]
    pub max_future_skew: String,
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Simulate as `run` over this many input partitions: each contact's
    /// events on the partition its id hashes to (Kafka's murmur2), each
    /// partition with its own clock and its share of every coupon pool. The
    /// same transitions then carry the codes `run` hands out.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub partitions: u32,
}

/// What a run over events did (`simulate`, `reprocess`), printed to stderr.
#[derive(Default)]
pub(super) struct Summary {
    pub lines: u64,
    pub folded: u64,
    pub duplicates: u64,
    /// Forget events folded (contacts erased).
    pub forgotten: u64,
    pub malformed: u64,
    /// Folded with an `occurred_at` before the clock.
    pub late: u64,
    /// Event names no definition uses, with their counts: a misspelt event
    /// name shows up here instead of silently entering nobody.
    pub unrouted: BTreeMap<String, u64>,
    pub by_type: BTreeMap<&'static str, u64>,
    pub sends_per_week: BTreeMap<(i32, u32), u64>,
    /// Holdouts and split tests, per variant.
    pub experiments: crate::sim::report::Experiments,
}

impl Summary {
    /// A transition made in partition `p`.
    pub fn count(&mut self, defs: &crate::domain::Definitions, t: &Transition, p: u32) {
        self.experiments.transition(defs, t, p);
        *self.by_type.entry(t.kind.type_name()).or_default() += 1;
        if matches!(t.kind, TransitionKind::Send { .. })
            && let Some(dt) = chrono::DateTime::from_timestamp_millis(t.at.0)
        {
            let w = dt.iso_week();
            *self.sends_per_week.entry((w.year(), w.week())).or_default() += 1;
        }
    }

    /// An event folded in partition `p`, after the transitions it made were
    /// counted.
    pub fn folded(&mut self, defs: &crate::domain::Definitions, ev: &Event, p: u32) {
        self.experiments.event(defs, ev, p);
    }

    pub fn print(&self, defs: &crate::domain::Definitions, clock: Option<Timestamp>) {
        eprintln!(
            "events: {} line(s), {} folded, {} duplicate(s) ignored, {} malformed skipped",
            self.lines, self.folded, self.duplicates, self.malformed
        );
        eprintln!("late events (before the clock when folded): {}", self.late);
        if self.forgotten > 0 {
            eprintln!("contacts forgotten (forget events): {}", self.forgotten);
        }
        if !self.unrouted.is_empty() {
            let names: Vec<String> = self
                .unrouted
                .iter()
                .map(|(n, c)| format!("{n:?} ({c})"))
                .collect();
            eprintln!(
                "events with a name no definition uses (no purchase, subscription or trigger; folded into nothing): {}",
                names.join(", ")
            );
        }
        if let Some(c) = clock {
            eprintln!("clock: {c}");
        }
        let total: u64 = self.by_type.values().sum();
        eprintln!("transitions: {total}");
        for (t, n) in &self.by_type {
            eprintln!("  {t:<22} {n}");
        }
        eprintln!("sends per week (ISO week of `at`):");
        if self.sends_per_week.is_empty() {
            eprintln!("  none");
        }
        for ((y, w), n) in &self.sends_per_week {
            eprintln!("  {y}-W{w:02}  {n}");
        }
        self.experiments.print(defs);
    }
}

pub fn run(args: &Args) -> Result<ExitCode, CliError> {
    let until = match &args.until {
        Some(u) => Some(
            Timestamp::parse_rfc3339(u).map_err(|reason| CliError::Until {
                value: u.clone(),
                reason,
            })?,
        ),
        None => None,
    };
    let skew = crate::domain::time::Duration::parse(&args.max_future_skew).map_err(|reason| {
        CliError::Flag {
            flag: "--max-future-skew",
            value: args.max_future_skew.clone(),
            reason,
        }
    })?;
    // A line has no record timestamp: `--until` stands for the time the
    // events were produced, else now.
    let reference = until.unwrap_or_else(|| Timestamp(chrono::Utc::now().timestamp_millis()));
    let latest = reference.saturating_add(skew);
    let Some(loaded) = super::load_definitions(&args.config) else {
        return Ok(ExitCode::from(1));
    };
    let defs = Arc::new(loaded.definitions);
    let input = File::open(&args.events).map_err(|source| CliError::Read {
        path: args.events.clone(),
        source,
    })?;
    let out_name = args
        .out
        .as_ref()
        .map_or_else(|| "stdout".to_string(), |p| p.display().to_string());
    let write_err = |source| CliError::Write {
        path: out_name.clone(),
        source,
    };
    let mut out: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(BufWriter::new(File::create(p).map_err(write_err)?)),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };

    let partitions = args.partitions as usize;
    let mut sims: Vec<Simulator> = if partitions == 1 {
        vec![Simulator::new(defs.clone())]
    } else {
        (0..partitions)
            .map(|p| Simulator::for_partition(defs.clone(), p, partitions))
            .collect()
    };
    let mut summary = Summary::default();
    let mut batch: Vec<Transition> = Vec::new();
    let partition_of = |contact: &str| -> u32 {
        if partitions == 1 {
            0
        } else {
            crate::source::partition_for_key(contact.as_bytes(), partitions as u32)
        }
    };
    let emit = |batch: &mut Vec<Transition>,
                out: &mut Box<dyn Write>,
                summary: &mut Summary|
     -> Result<(), CliError> {
        for t in batch.drain(..) {
            summary.count(&defs, &t, partition_of(&t.contact));
            let line = match args.format {
                Format::Json => wire::json::encode_transition(&defs, &t),
                Format::Text => wire::text::render(&defs, &t),
            };
            writeln!(out, "{line}").map_err(write_err)?;
        }
        Ok(())
    };

    let name = args.events.display().to_string();
    // Events are folded in batches (see `Simulator::feed_batch`), each with
    // its line number; a line that does not decode ends the batch before it
    // is reported, so that reports and transitions keep the file's order.
    let mut pending: Vec<Event> = Vec::with_capacity(BATCH);
    let mut linenos: Vec<usize> = Vec::with_capacity(BATCH);
    // Folds the pending events; false when `--strict` stops the run.
    let flush = |sims: &mut [Simulator],
                 pending: &mut Vec<Event>,
                 linenos: &mut Vec<usize>,
                 batch: &mut Vec<Transition>,
                 out: &mut Box<dyn Write>,
                 summary: &mut Summary|
     -> Result<bool, CliError> {
        let mut failed: Result<(), CliError> = Ok(());
        let mut stopped = false;
        let mut each =
            |i: usize, result: Result<Folded, EventError>, batch: &mut Vec<Transition>| {
                let (ev, lineno) = (&pending[i], linenos[i]);
                let applied = matches!(result, Ok(Folded::Applied));
                match result {
                    Ok(Folded::Applied) => summary.folded += 1,
                    Ok(Folded::Forgotten) => {
                        summary.folded += 1;
                        summary.forgotten += 1;
                    }
                    Ok(Folded::Unrouted) => {
                        summary.folded += 1;
                        *summary.unrouted.entry(ev.name.clone()).or_default() += 1;
                    }
                    Ok(Folded::Duplicate) => {
                        summary.duplicates += 1;
                        eprintln!(
                            "{name}:{lineno}: duplicate event_id {:?} for contact {:?}: ignored",
                            ev.event_id, ev.contact_id
                        );
                    }
                    Err(e) => {
                        summary.malformed += 1;
                        eprintln!("{name}:{lineno}: invalid event: {e}");
                        stopped = args.strict;
                    }
                }
                failed = emit(batch, out, summary);
                if applied {
                    summary.folded(&defs, ev, partition_of(&ev.contact_id));
                }
                if failed.is_err() || stopped {
                    if stopped {
                        eprintln!("{name}:{lineno}: stopping (--strict)");
                    }
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            };
        if let [sim] = sims {
            sim.feed_batch(pending, batch, each);
        } else {
            // Each event to its partition, in file order: what `run` folds
            // when the file is produced, keyed by contact, at once.
            for (i, ev) in pending.iter().enumerate() {
                let p =
                    crate::source::partition_for_key(ev.contact_id.as_bytes(), sims.len() as u32);
                let result = sims[p as usize].feed(ev, batch);
                if each(i, result, batch).is_break() {
                    break;
                }
            }
        }
        pending.clear();
        linenos.clear();
        failed.map(|()| !stopped)
    };
    // `None` after the last line: what is pending is folded there.
    let lines = super::event_lines(input, &args.events).map(Some);
    for line in lines.chain(std::iter::once(None)) {
        let at_end = line.is_none();
        let (mut bad, mut lineno) = (None, 0);
        if let Some(line) = line {
            let (n, line) = line?;
            lineno = n;
            summary.lines += 1;
            match wire::json::decode_event(&line) {
                Ok(ev) if ev.occurred_at > latest => {
                    bad = Some(format!(
                        "occurred_at {} is more than {skew} after {reference} (--max-future-skew): skipped, as `run` dead-letters it",
                        ev.occurred_at
                    ));
                }
                Ok(ev) => {
                    pending.push(ev);
                    linenos.push(lineno);
                }
                Err(reason) => bad = Some(reason.to_string()),
            }
        }
        let mut go_on = true;
        if at_end || bad.is_some() || pending.len() == BATCH {
            go_on = flush(
                &mut sims,
                &mut pending,
                &mut linenos,
                &mut batch,
                &mut out,
                &mut summary,
            )?;
        }
        if let Some(reason) = bad.filter(|_| go_on) {
            summary.malformed += 1;
            eprintln!("{name}:{lineno}: {reason}");
            if args.strict {
                eprintln!("{name}:{lineno}: stopping (--strict)");
                go_on = false;
            }
        }
        if !go_on {
            out.flush().map_err(write_err)?;
            return Ok(ExitCode::from(1));
        }
    }
    let clock = sims.iter().filter_map(Simulator::clock).max();
    if let Some(u) = until {
        if clock.is_some_and(|c| u < c) {
            eprintln!(
                "warning: --until {u} is before the clock ({}); the clock never goes back",
                clock.unwrap_or(u)
            );
        }
        for sim in &mut sims {
            sim.advance_to(u, &mut batch);
            emit(&mut batch, &mut out, &mut summary)?;
        }
    }
    out.flush().map_err(write_err)?;
    summary.late = sims.iter().map(Simulator::late_events).sum();
    summary.print(&defs, sims.iter().filter_map(Simulator::clock).max());
    Ok(ExitCode::SUCCESS)
}
