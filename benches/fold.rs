//! The pure fold on one core: `cargo bench --bench fold`.
//!
//! 1M contacts (`WINBACK_BENCH_CONTACTS` to change) with a repeat-purchase mix -
//! 55% buy once, 20% twice, 10% three times, 15% four to ten times, gaps
//! exponential with a 45-day mean, over a year - 70% subscribed to the master
//! list, 3% of events delivered up to two days late. Both shipped seed
//! conversations run (`WINBACK_BENCH_CONFIG=winback-90d.toml` for one), the
//! coupon pool holding two codes per contact.
//! `WINBACK_BENCH_FOLD_ONLY=1` stops after the first fold (for profiling).
//! Prints events/s of the fold in batches (`Simulator::feed_batch`; waits fire
//! during it as the clock moves), the same fold in batches and one event at a
//! time alternating 20k-event chunks in one process, JSON decoding plus the
//! fold, allocations per event, and live heap bytes per contact after the fold
//! (a counting allocator).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mimalloc::MiMalloc;
use winback::domain::time::{DAY_MS, HOUR_MS};
use winback::domain::{Event, Timestamp};
use winback::sim::Simulator;
use winback::wire;

/// Counts, and allocates with mimalloc: the allocator of the `winback` binary.
/// The counts are the thread's own, not atomics: an atomic add per call would
/// put into the timed fold a locked instruction per allocation and free that
/// the `winback` binary does not have (the bench is one thread).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static ALLOCS: Cell<isize> = const { Cell::new(0) };
}

fn add(c: &'static std::thread::LocalKey<Cell<isize>>, n: isize) {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = c.try_with(|c| c.set(c.get() + n));
}

fn live() -> isize {
    LIVE.with(Cell::get)
}

fn allocs() -> isize {
    ALLOCS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        add(&LIVE, l.size() as isize);
        add(&ALLOCS, 1);
        unsafe { MiMalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        add(&LIVE, -(l.size() as isize));
        unsafe { MiMalloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        add(&LIVE, new as isize - l.size() as isize);
        add(&ALLOCS, 1);
        unsafe { MiMalloc.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// splitmix64: a fixed, seedable stream so every run folds the same events.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// This process's user and system CPU seconds, from `/proc/self/stat` (in
/// the kernel's USER_HZ ticks, 1/100 s on Linux); `None` elsewhere. The
/// system share is mostly the kernel zeroing pages the fold touches first.
fn cpu_times() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split(' ').skip(11);
    let user: f64 = f.next()?.parse().ok()?;
    let sys: f64 = f.next()?.parse().ok()?;
    Some((user / 100.0, sys / 100.0))
}

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn workload(contacts: usize) -> Vec<Event> {
    let mut rng = Rng(42);
    let mut evs: Vec<(i64, Event)> = Vec::with_capacity(contacts * 3);
    for c in 0..contacts {
        let contact_id = format!("contact-{c:08}");
        let r = rng.unit();
        let purchases = if r < 0.55 {
            1
        } else if r < 0.75 {
            2
        } else if r < 0.85 {
            3
        } else {
            4 + (rng.next() % 7) as usize
        };
        let mut at = T0 + (rng.unit() * 365.0 * DAY_MS as f64) as i64;
        if rng.unit() < 0.7 {
            evs.push((
                at - DAY_MS,
                Event {
                    event_id: format!("sub-{c}"),
                    name: "subscribe".into(),
                    contact_id: contact_id.clone(),
                    occurred_at: Timestamp(at - DAY_MS),
                    merchant_id: None,
                    order_id: None,
                    total_cents: None,
                    list_id: Some("master".into()),
                    attributes: Vec::new(),
                },
            ));
        }
        for p in 0..purchases {
            let late = if rng.unit() < 0.03 {
                (rng.unit() * 48.0 * HOUR_MS as f64) as i64
            } else {
                0
            };
            evs.push((
                at + late,
                Event {
                    event_id: format!("order-{c}-{p}"),
                    name: "checkout".into(),
                    contact_id: contact_id.clone(),
                    occurred_at: Timestamp(at),
                    merchant_id: Some("store".into()),
                    order_id: Some(format!("o-{c}-{p}")),
                    total_cents: Some(1000 + (rng.next() % 20_000) as i64),
                    list_id: None,
                    attributes: Vec::new(),
                },
            ));
            at += (-(1.0 - rng.unit()).ln() * 45.0 * DAY_MS as f64) as i64 + HOUR_MS;
        }
    }
    evs.sort_by_key(|(arrival, _)| *arrival);
    evs.into_iter().map(|(_, e)| e).collect()
}

fn main() {
    let contacts: usize = std::env::var("WINBACK_BENCH_CONTACTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    // WINBACK_BENCH_CONFIG: comma-separated file names under config/ (default: both seeds).
    let files: Vec<PathBuf> = std::env::var("WINBACK_BENCH_CONFIG")
        .unwrap_or_else(|_| "winback-90d.toml,winback-filter-coupon.toml".into())
        .split(',')
        .map(|f| root.join(f.trim()))
        .collect();
    let mut defs = winback::config::load_files(&files)
        .expect("bench definitions")
        .definitions;
    let names: Vec<&str> = defs.conversations.iter().map(|c| &*c.name).collect();
    println!("conversations: {names:?}");
    // A code per contact and then some, so the pool never runs dry mid-run.
    if let Some(pool) = defs.pools.first_mut() {
        pool.codes = (0..contacts * 2)
            .map(|i| Arc::from(format!("WB-{i:09}")))
            .collect();
    }
    let defs = Arc::new(defs);

    let t = Instant::now();
    let events = workload(contacts);
    println!(
        "workload: {} events for {contacts} contacts, built in {:.1?}",
        events.len(),
        t.elapsed()
    );

    let (live_before, allocs_before) = (live(), allocs());
    let mut sim = Simulator::new(defs.clone());
    let mut out = Vec::with_capacity(64);
    let (mut transitions, mut sends) = (0u64, 0u64);
    let cpu_before = cpu_times();
    let t = Instant::now();
    sim.feed_batch(&events, &mut out, |_, _, out| {
        transitions += out.len() as u64;
        sends += out
            .iter()
            .filter(|t| matches!(t.kind, winback::domain::TransitionKind::Send { .. }))
            .count() as u64;
        out.clear();
        ControlFlow::Continue(())
    });
    let fold = t.elapsed();
    let cpu = cpu_before
        .zip(cpu_times())
        .map(|((u0, s0), (u1, s1))| format!("; CPU: user {:.2}s, system {:.2}s", u1 - u0, s1 - s0))
        .unwrap_or_default();
    let live = live() - live_before;
    let allocs = allocs() - allocs_before;
    println!(
        "fold: {:.0} events/s ({} events in {:.2?}, {transitions} transitions, {sends} sends during the fold{cpu})",
        events.len() as f64 / fold.as_secs_f64(),
        events.len(),
        fold
    );
    println!(
        "allocations: {:.1} per event",
        allocs as f64 / events.len() as f64
    );
    println!(
        "memory: {} contacts, {:.0} bytes per contact live on the heap ({:.1} MiB; {} waits pending, cancelled ones not yet due among them)",
        sim.contacts(),
        live as f64 / sim.contacts() as f64,
        live as f64 / (1 << 20) as f64,
        sim.timers_held()
    );

    println!(
        "sizes: contact state {} B inline (of the heap figure above), transition {} B",
        std::mem::size_of::<winback::domain::ContactState>(),
        std::mem::size_of::<winback::domain::Transition>()
    );

    drop(sim);
    out.clear();
    // For profiling and quick comparisons: the fold alone, a few seconds.
    if std::env::var_os("WINBACK_BENCH_FOLD_ONLY").is_some() {
        return;
    }

    // Batches against one event at a time, in one process: on a shared VM
    // whose speed drifts from minute to minute, only alternating the two over
    // the same moments compares them.
    const CHUNK: usize = 20_000;
    let mut batched = Simulator::new(defs.clone());
    let mut single = Simulator::new(defs.clone());
    let (mut t_batched, mut t_single) = (Duration::ZERO, Duration::ZERO);
    for (k, chunk) in events.chunks(CHUNK).enumerate() {
        // Batches go first in even chunks, second in odd ones.
        for batch_turn in [k % 2 == 0, k % 2 == 1] {
            let t = Instant::now();
            if batch_turn {
                batched.feed_batch(chunk, &mut out, |_, _, out| {
                    out.clear();
                    ControlFlow::Continue(())
                });
                t_batched += t.elapsed();
            } else {
                for ev in chunk {
                    let _ = single.feed(ev, &mut out);
                    out.clear();
                }
                t_single += t.elapsed();
            }
        }
    }
    let rate = |d: Duration| events.len() as f64 / d.as_secs_f64();
    println!(
        "fold in alternating {CHUNK}-event chunks: in batches {:.0} events/s, one at a time {:.0} events/s ({:+.1}%)",
        rate(t_batched),
        rate(t_single),
        (rate(t_batched) / rate(t_single) - 1.0) * 100.0
    );
    drop((batched, single));

    let lines: Vec<String> = events.iter().map(wire::json::encode_event).collect();
    let mut sim = Simulator::new(defs);
    let t = Instant::now();
    for line in &lines {
        if let Ok(ev) = wire::json::decode_event(line) {
            let _ = sim.feed(&ev, &mut out);
        }
        out.clear();
    }
    let d = t.elapsed();
    println!(
        "decode JSON + fold: {:.0} events/s",
        lines.len() as f64 / d.as_secs_f64()
    );
}
