use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn run(config: Option<&Path>, files: &[PathBuf]) -> ExitCode {
    let mut all: Vec<PathBuf> = files.to_vec();
    if let Some(path) = config {
        let Some(cfg) = super::load_engine(path) else {
            return ExitCode::from(1);
        };
        println!(
            "valid engine config: {} input topic(s), brokers: {}",
            cfg.inputs.len(),
            if cfg.embedded() {
                format!("embedded on {}", cfg.embedded_listen)
            } else {
                cfg.bootstrap_servers.clone()
            }
        );
        all.extend(cfg.conversations.iter().cloned());
    }
    match super::load_definitions(&all) {
        Some(loaded) => {
            let d = &loaded.definitions;
            let steps: usize = d.conversations.iter().map(|c| c.steps.len()).sum();
            println!(
                "valid: {} conversation(s), {steps} step(s), {} coupon pool(s), {} warning(s)",
                d.conversations.len(),
                d.pools.len(),
                loaded.warnings.len()
            );
            ExitCode::SUCCESS
        }
        None => ExitCode::from(1),
    }
}
