//! `winback run`: the stream processor, with the embedded broker when no
//! brokers are configured.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::CliError;
use crate::config::engine::EngineConfig;
use crate::runtime::{self, RunParams, RunStats, SystemClock, embedded::EmbeddedBroker};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The engine config (TOML); see config/winback.toml.
    #[arg(long)]
    pub config: PathBuf,
}

pub fn run(args: &Args) -> Result<ExitCode, CliError> {
    let Some((cfg, defs)) = super::load_engine_and_definitions(&args.config) else {
        return Ok(ExitCode::from(1));
    };

    let broker = if cfg.embedded() {
        let b = EmbeddedBroker::start(&cfg.embedded_listen, &cfg.state_dir.join("broker"))?;
        let addr = b.addr.to_string();
        runtime::embedded::create_topics(&cfg, &addr, cfg.embedded_partitions)?;
        eprintln!(
            "embedded Kafka broker listening on {addr} (no broker.bootstrap_servers configured)"
        );
        eprintln!(
            "  it is for trying winback, not for production: it keeps its topics in memory (saved on a clean stop only) and runs {} (see README, \"The embedded broker\"); point broker.bootstrap_servers at Kafka for real mail",
            cfg.guarantee.as_str()
        );
        eprintln!(
            "  send events:   winback produce --config {} --events FILE.jsonl   (or: kcat -b {addr} -t {} -P -K:)",
            args.config.display(),
            cfg.inputs[0].topic
        );
        eprintln!(
            "  see the output: winback tail --config {}   (or: kcat -b {addr} -t {} -C)",
            args.config.display(),
            cfg.outputs.sends
        );
        Some(b)
    } else {
        None
    };
    let bootstrap = broker
        .as_ref()
        .map_or_else(|| cfg.bootstrap_servers.clone(), |b| b.addr.to_string());

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(RunStats::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    let params = RunParams {
        config: cfg.clone(),
        definitions: defs,
        bootstrap,
        clock: Arc::new(SystemClock),
        stop: Arc::clone(&stop),
        stats: Arc::clone(&stats),
    };
    let result = rt.block_on(async {
        let worker = tokio::task::spawn_blocking(move || runtime::run(params));
        tokio::pin!(worker);
        let signal = shutdown_signal();
        tokio::select! {
            r = &mut worker => r,
            () = signal => {
                tracing::info!("shutting down: finishing the batch");
                stop.store(true, Ordering::Release);
                worker.await
            }
        }
    });
    if let Some(b) = &broker {
        b.save();
    }
    let summary = summary(&stats);
    match result {
        Ok(Ok(())) => {
            eprintln!("stopped: {summary}");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(e)) => {
            eprintln!("winback run: {e}");
            eprintln!("stopped: {summary}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(CliError::Runtime(e.to_string())),
    }
}

fn summary(s: &RunStats) -> String {
    format!(
        "{} event(s) ({} late, {} misrouted), {} transition(s), {} dead letter(s), {} batch(es) written",
        s.events.load(Ordering::Relaxed),
        s.late_events.load(Ordering::Relaxed),
        s.misrouted.load(Ordering::Relaxed),
        s.transitions.load(Ordering::Relaxed),
        s.dead_letters.load(Ordering::Relaxed),
        s.batches.load(Ordering::Relaxed)
    )
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The brokers a client command talks to: the configured ones, or the
/// embedded broker of a running `winback run`.
pub fn client_bootstrap(cfg: &EngineConfig) -> String {
    if cfg.embedded() {
        cfg.embedded_listen.clone()
    } else {
        cfg.bootstrap_servers.clone()
    }
}
