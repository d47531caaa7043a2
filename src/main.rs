use std::process::ExitCode;

fn main() -> ExitCode {
    match winback::cli::main() {
        Ok(code) => code,
        Err(e) => {
            let e = anyhow::Error::from(e);
            eprintln!("winback: {e:#}");
            ExitCode::from(2)
        }
    }
}
