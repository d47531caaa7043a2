//! The command line: parse and validate first, act after.

mod simulate;
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
    /// Check conversation definition files; exit 0 if valid, 1 if not.
    Validate {
        /// Definition files (TOML); pools declared in one are visible to all.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run conversations offline over a file of JSON events, one per line.
    Simulate(simulate::Args),
}

pub fn main() -> Result<ExitCode, CliError> {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { files } => Ok(validate::run(&files)),
        Command::Simulate(args) => simulate::run(&args),
    }
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
