//! Cache hints: asking the CPU to start loading memory that code is about to
//! read. Hints only: nothing here changes what the program computes, so the
//! pure domain may use them too.

use std::sync::Arc;

/// Asks the CPU to load every cache line of `*r`: a hint, with no effect on
/// what the program computes.
#[inline(always)]
pub(crate) fn prefetch<T>(r: &T) {
    let p = (r as *const T).cast::<u8>();
    let size = std::mem::size_of::<T>();
    // From the line of the first byte to that of the last: `*r` need not
    // start a line.
    let lines = ((p as usize % 64) + size).div_ceil(64);
    for l in 0..lines {
        prefetch_line(p.wrapping_add(l * 64));
    }
}

/// Asks the CPU to load the line of an `Arc<str>`'s reference counts, two
/// words before its text in std's layout today (were that to change, the
/// prefetch would merely be useless), and so its text when that is short.
#[inline(always)]
pub(crate) fn prefetch_arc(id: &Arc<str>) {
    prefetch_line(Arc::as_ptr(id).cast::<u8>().wrapping_sub(16));
}

/// Asks the CPU to load the cache line holding `p`.
#[inline(always)]
pub(crate) fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch reads nothing the program sees and never faults,
        // whatever the address; SSE, its target feature, is part of x86_64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
