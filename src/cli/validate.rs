use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(files: &[PathBuf]) -> ExitCode {
    match super::load_definitions(files) {
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
