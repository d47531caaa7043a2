//! The command line: parse and validate first, act after.

mod forget;
mod inspect;
mod produce;
mod reprocess;
mod run;
mod simulate;
mod state;
mod tail;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("--until {value:?}: {reason}")]
    Until { value: String, reason: String },
    #[error("{flag} {value:?}: {reason}")]
    Flag {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("Kafka: {0}")]
    Kafka(String),
    #[error("runtime: {0}")]
    Runtime(String),
    #[error(transparent)]
    Embedded(#[from] crate::runtime::embedded::EmbeddedError),
}

#[derive(Debug, Parser)]
#[command(
    name = "winback",
    version,
    about = "Winback conversations as an event-sourced stream processor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// One JSON object per line (the documented transition form).
    Json,
    /// One readable line per transition (as in the golden scenarios).
    Text,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check conversation definition files and/or an engine config (with the
    /// conversation files it names); exit 0 if valid, 1 if not.
    Validate {
        /// An engine config (TOML), as given to `winback run`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Definition files (TOML); pools declared in one are visible to all.
        #[arg(required_unless_present = "config")]
        files: Vec<PathBuf>,
    },
    /// Run conversations offline over a file of JSON events, one per line.
    Simulate(simulate::Args),
    /// Run the stream processor: Kafka in, RocksDB state, transitions out.
    Run(run::Args),
    /// Publish a JSON-lines file of events to an input topic.
    Produce(produce::Args),
    /// Print the transitions (or sends, or dead letters) topic as JSON lines.
    Tail(tail::Args),
    /// Re-derive transitions from the input topics' history with event time,
    /// to a separate topic, a file or a summary (never the live topics).
    Reprocess(reprocess::Args),
    /// Rebuild the local state from the changelog topic (exactly-once mode).
    Rebuild(state::RebuildArgs),
    /// Explain one contact from the local store (also while `run` holds it).
    Inspect(inspect::Args),
    /// Erase a contact (a privacy request): publish a `forget` event for it.
    Forget(forget::Args),
    /// Inspect the local state.
    #[command(subcommand)]
    State(StateCommand),
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Print a digest of each partition's state and of all of it: two stores
    /// holding the same state print the same digests.
    Digest(state::DigestArgs),
}

pub fn main() -> Result<ExitCode, CliError> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run(_)) {
        init_logging();
    }
    match cli.command {
        Command::Validate { config, files } => Ok(validate::run(config.as_deref(), &files)),
        Command::Simulate(args) => simulate::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Produce(args) => produce::run(&args),
        Command::Tail(args) => tail::run(&args),
        Command::Reprocess(args) => reprocess::run(&args),
        Command::Rebuild(args) => state::rebuild(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Forget(args) => forget::run(&args),
        Command::State(StateCommand::Digest(args)) => state::digest(&args),
    }
}

/// Structured logs on stderr; `RUST_LOG` filters (default `info`),
/// `WINBACK_LOG_FORMAT=json` gives one JSON object per line.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal, never in a log file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if std::env::var("WINBACK_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Loads an engine config, printing every diagnostic to stderr; `None` if invalid.
fn load_engine(path: &std::path::Path) -> Option<crate::config::engine::EngineConfig> {
    match crate::config::engine::load_engine(path, std::env::vars()) {
        Ok(c) => Some(c),
        Err(invalid) => {
            for d in &invalid.diagnostics {
                eprintln!("{d}");
            }
            None
        }
    }
}

/// Loads an engine config and the conversations it names, printing every
/// diagnostic to stderr; `None` if either is invalid.
fn load_engine_and_definitions(
    path: &std::path::Path,
) -> Option<(
    crate::config::engine::EngineConfig,
    std::sync::Arc<crate::domain::Definitions>,
)> {
    let cfg = load_engine(path)?;
    let loaded = load_definitions(&cfg.conversations)?;
    Some((cfg, std::sync::Arc::new(loaded.definitions)))
}

/// The non-blank lines of an events file with their numbers (from 1).
fn event_lines(
    file: std::fs::File,
    path: &std::path::Path,
) -> impl Iterator<Item = Result<(usize, String), CliError>> {
    use std::io::BufRead;
    std::io::BufReader::new(file)
        .lines()
        .enumerate()
        .filter_map(move |(n, line)| match line {
            Ok(l) if l.trim().is_empty() => None,
            Ok(l) => Some(Ok((n + 1, l))),
            Err(source) => Some(Err(CliError::Read {
                path: path.to_path_buf(),
                source,
            })),
        })
}

/// Loads definitions, printing every diagnostic to stderr; `None` if invalid.
fn load_definitions(files: &[PathBuf]) -> Option<crate::config::Loaded> {
    match crate::config::load_files(files) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            Some(loaded)
        }
        Err(invalid) => {
            for d in &invalid.diagnostics {
                eprintln!("{d}");
            }
            None
        }
    }
}
