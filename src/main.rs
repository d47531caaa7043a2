use std::process::ExitCode;

// glibc's allocator spent a third of the runtime's CPU consolidating the
// many small, short-lived buffers of a batch (measured with perf). The
// `override` feature (Cargo.toml) also serves librdkafka's and RocksDB's
// `malloc`: their per-message allocations, freed on other threads, contended
// on glibc's arenas (14% of the CPU of a catch-up).
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
