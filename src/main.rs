use std::process::ExitCode;

// glibc's allocator spent a third of the runtime's CPU consolidating the
// many small, short-lived buffers of a batch (measured with perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
