//! `winback rebuild` (local state from the changelog) and `winback state
//! digest` (a digest of the local state, to compare two stores).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::CliError;
use crate::config::engine::{EngineConfig, Guarantee};
use crate::runtime::embedded::EmbeddedBroker;
use crate::runtime::restore::restore_partition;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct RebuildArgs {
    /// The engine config (TOML) of the `winback run` whose state to rebuild.
    #[arg(long)]
    pub config: PathBuf,
    /// Only these partitions (repeatable). Default: those the store holds,
    /// or, for an empty store, every partition of the changelog.
    #[arg(long = "partition")]
    pub partitions: Vec<u32>,
    /// No progress bar (for logs and scripts).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct DigestArgs {
    /// The engine config (TOML) naming the state directory.
    #[arg(long)]
    pub config: PathBuf,
    /// Only these partitions (repeatable). Default: every partition the store holds.
    #[arg(long = "partition")]
    pub partitions: Vec<u32>,
}

fn open_store(cfg: &EngineConfig) -> Result<Store, CliError> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(|e| CliError::Write {
        path: cfg.state_dir.display().to_string(),
        source: e,
    })?;
    // RocksDB's lock refuses a store a running `winback run` holds.
    Store::open(&cfg.state_dir.join("rocksdb")).map_err(|e| CliError::Runtime(e.to_string()))
}

pub fn rebuild(args: &RebuildArgs) -> Result<ExitCode, CliError> {
    let Some((cfg, defs)) = super::load_engine_and_definitions(&args.config) else {
        return Ok(ExitCode::from(1));
    };
    if cfg.guarantee != Guarantee::ExactlyOnce {
        eprintln!(
            "winback rebuild: {}: processing.guarantee is at_least_once, which keeps no changelog to rebuild from",
            args.config.display()
        );
        return Ok(ExitCode::from(1));
    }
    let broker = if cfg.embedded() {
        Some(EmbeddedBroker::start(
            &cfg.embedded_listen,
            &cfg.state_dir.join("broker"),
        )?)
    } else {
        None
    };
    let bootstrap = broker
        .as_ref()
        .map_or_else(|| cfg.bootstrap_servers.clone(), |b| b.addr.to_string());
    let store = open_store(&cfg)?;
    crate::runtime::load_pools(&store, &defs).map_err(|e| CliError::Runtime(e.to_string()))?;
    let consumer: BaseConsumer = crate::source::reader_config(&cfg, &bootstrap)
        .create()
        .map_err(|e| CliError::Kafka(e.to_string()))?;
    let topic = &cfg.outputs.changelog;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| CliError::Kafka(format!("metadata of {topic:?}: {e}")))?;
    let count = md
        .topics()
        .iter()
        .find(|t| t.name() == topic.as_str() && t.error().is_none())
        .map_or(0, |t| t.partitions().len() as u32);
    if count == 0 {
        return Err(CliError::Kafka(format!(
            "the changelog topic {topic:?} does not exist"
        )));
    }
    let runtime_err = |e: crate::runtime::RuntimeError| CliError::Runtime(e.to_string());
    let store_err = |e: crate::store::StoreError| CliError::Runtime(e.to_string());
    match store.partitions().map_err(store_err)? {
        Some(n) if n != count => {
            return Err(CliError::Runtime(format!(
                "the store was built with {n} partitions; the changelog has {count}"
            )));
        }
        Some(_) => {}
        None => store.set_partitions(count).map_err(store_err)?,
    }
    if store.guarantee().map_err(store_err)?.is_none() {
        store
            .set_guarantee(Guarantee::ExactlyOnce.as_str())
            .map_err(store_err)?;
    }
    let mut parts = args.partitions.clone();
    if parts.is_empty() {
        parts = store.stored_partitions().map_err(store_err)?;
    }
    if parts.is_empty() {
        parts = (0..count).collect();
    }
    if let Some(p) = parts.iter().find(|p| **p >= count) {
        return Err(CliError::Runtime(format!(
            "partition {p}: the changelog has partitions 0 to {}",
            count - 1
        )));
    }
    let mut total = 0u64;
    for p in &parts {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p as i32, Duration::from_secs(10))
            .map_err(|e| CliError::Kafka(e.to_string()))?;
        total += (high - low).max(0) as u64;
    }
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} records  {per_sec}  ETA {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let mut records = 0u64;
    for p in &parts {
        bar.set_message(format!("partition {p}"));
        // From nothing: the state it replaces is compared, not reused.
        store.drop_partition(*p).map_err(store_err)?;
        let base = records;
        let done = restore_partition(
            &store,
            &defs,
            &cfg,
            &bootstrap,
            *p,
            &stop,
            &mut |n, _, _| bar.set_position(base + n),
        )
        .map_err(runtime_err)?;
        records += done.records;
        bar.set_position(records);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "rebuilt {} partition(s) from {topic}: {records} record(s) in {secs:.1} s ({:.0} records/s)",
        parts.len(),
        records as f64 / secs.max(1e-9)
    );
    drop(store);
    if let Some(b) = &broker {
        b.save();
    }
    Ok(ExitCode::SUCCESS)
}

pub fn digest(args: &DigestArgs) -> Result<ExitCode, CliError> {
    let Some(cfg) = super::load_engine(&args.config) else {
        return Ok(ExitCode::from(1));
    };
    let store = open_store(&cfg)?;
    let store_err = |e: crate::store::StoreError| CliError::Runtime(e.to_string());
    let mut parts = args.partitions.clone();
    if parts.is_empty() {
        parts = store.stored_partitions().map_err(store_err)?;
    }
    let mut all = xxhash_rust::xxh3::Xxh3::new();
    let mut entries = 0u64;
    for p in &parts {
        let (d, n) = store.digest(*p).map_err(store_err)?;
        println!("partition {p}: {d:016x} ({n} entries)");
        all.update(&p.to_be_bytes());
        all.update(&d.to_be_bytes());
        entries += n;
    }
    println!(
        "all: {:016x} ({} partition(s), {entries} entries)",
        all.digest(),
        parts.len()
    );
    Ok(ExitCode::SUCCESS)
}
