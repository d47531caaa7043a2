//! A hierarchical timing wheel: pending waits bucketed by expiry, so that adding
//! one is an append and the clock jumps straight to the next occupied bucket.
//!
//! Shape (after tokio's wheel and Kafka's purgatory): `LEVELS` levels of 64
//! slots. A slot of level `l` spans `64^l` milliseconds, so level 0 holds one
//! exact millisecond per slot and level 6 a span of about 2.2 years; timers
//! further away than the wheel reaches wait in an ordered overflow map.
//!
//! Placement: a timer due at `d` sits at the level of the highest 6-bit group in
//! which `d` and the wheel's time (`elapsed`) differ, in slot `(d >> 6l) & 63`.
//! Invariant ([`Wheel::placement_holds`]): every timer in the wheel shares with
//! `elapsed` all bits above its level's span and sits at or after `elapsed`'s
//! slot on that level, so "the next occupied slot" never wraps, and the lowest
//! occupied level always holds the earliest timers.
//!
//! Taking timers: the earliest occupied slot is processed when its start is
//! due: `elapsed` jumps to its start; a level-0 slot's timers (all due at that
//! millisecond) move to the `ready` heap; a higher slot's timers cascade to lower
//! levels. Timers come out in exact `(deadline, key)` order, which makes the
//! engine's output deterministic. A timer added already due goes straight to
//! `ready`.
//!
//! Cancellation is lazy: the engine ignores a timer that no longer matches a
//! waiting entry, so a re-entry costs one append and no search.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::domain::Timestamp;

const BITS: u32 = 6;
const SLOTS: usize = 1 << BITS;
const LEVELS: usize = 7;
/// A drained slot keeps a buffer up to this many timers.
const SLOT_KEEP: usize = 256;
/// Distance from `elapsed` beyond which a timer waits in the overflow map.
const RANGE_BITS: u32 = BITS * LEVELS as u32;

/// Timestamps as unsigned, order-preserving wheel time (pre-1970 instants too).
fn key(t: Timestamp) -> u64 {
    (t.0 as u64) ^ (1 << 63)
}

fn time(k: u64) -> Timestamp {
    Timestamp((k ^ (1 << 63)) as i64)
}

fn level_for(elapsed: u64, when: u64) -> usize {
    let masked = (elapsed ^ when) | (SLOTS as u64 - 1);
    let significant = 63 - masked.leading_zeros();
    (significant / BITS) as usize
}

fn slot_for(when: u64, level: usize) -> usize {
    ((when >> (BITS as usize * level)) & (SLOTS as u64 - 1)) as usize
}

struct Level<T> {
    /// Bit `s` set when slot `s` holds timers.
    occupied: u64,
    slots: Vec<Vec<(u64, T)>>,
}

pub struct Wheel<T> {
    elapsed: u64,
    levels: Vec<Level<T>>,
    overflow: BTreeMap<(u64, T), ()>,
    ready: BinaryHeap<Reverse<(u64, T)>>,
    len: usize,
}

impl<T: Ord> Default for Wheel<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Ord> Wheel<T> {
    pub fn new() -> Self {
        Wheel {
            elapsed: 0,
            levels: (0..LEVELS)
                .map(|_| Level {
                    occupied: 0,
                    slots: (0..SLOTS).map(|_| Vec::new()).collect(),
                })
                .collect(),
            overflow: BTreeMap::new(),
            ready: BinaryHeap::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, deadline: Timestamp, item: T) {
        self.len += 1;
        self.place(key(deadline), item);
    }

    fn place(&mut self, when: u64, item: T) {
        if when <= self.elapsed {
            self.ready.push(Reverse((when, item)));
            return;
        }
        let level = level_for(self.elapsed, when);
        if level >= LEVELS {
            self.overflow.insert((when, item), ());
            return;
        }
        let slot = slot_for(when, level);
        let l = &mut self.levels[level];
        l.occupied |= 1 << slot;
        l.slots[slot].push((when, item));
    }

    /// The earliest occupied slot: (level, slot, start time).
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        for (level, l) in self.levels.iter().enumerate() {
            if l.occupied == 0 {
                continue;
            }
            let pos = slot_for(self.elapsed, level);
            // By the placement invariant no occupied slot lies before `pos`.
            debug_assert!(
                l.occupied >> pos != 0,
                "occupied slot before the wheel's position"
            );
            let slot = if l.occupied >> pos != 0 {
                pos + (l.occupied >> pos).trailing_zeros() as usize
            } else {
                l.occupied.trailing_zeros() as usize
            };
            let span_bits = BITS as usize * (level + 1);
            let base = if span_bits >= 64 {
                0
            } else {
                self.elapsed & !((1u64 << span_bits) - 1)
            };
            return Some((
                level,
                slot,
                base + ((slot as u64) << (BITS as usize * level)),
            ));
        }
        None
    }

    /// Empties a slot that has come due: its timers due by `now` go straight to
    /// `ready` (which orders them), the others cascade to lower levels.
    fn process(&mut self, level: usize, slot: usize, start: u64, now: u64) {
        debug_assert!(start >= self.elapsed);
        self.elapsed = self.elapsed.max(start);
        let l = &mut self.levels[level];
        l.occupied &= !(1 << slot);
        let mut items = std::mem::take(&mut l.slots[slot]);
        for (when, item) in items.drain(..) {
            if when <= now {
                self.ready.push(Reverse((when, item)));
            } else {
                self.place(when, item);
            }
        }
        // Small slots keep their buffer for the next rotation; large ones free it.
        if items.capacity() <= SLOT_KEEP {
            self.levels[level].slots[slot] = items;
        }
        self.refill_from_overflow();
    }

    /// Moves overflow timers that the wheel now reaches into it.
    fn refill_from_overflow(&mut self) {
        while let Some((&(when, _), _)) = self.overflow.first_key_value() {
            if level_for(self.elapsed, when) >= LEVELS {
                break;
            }
            if let Some(((when, item), ())) = self.overflow.pop_first() {
                self.place(when, item);
            }
        }
    }

    /// Takes the earliest timer due at or before `now`, in (deadline, item)
    /// order. When none is due the wheel's time moves to `now`.
    pub fn pop_due(&mut self, now: Timestamp) -> Option<(Timestamp, T)> {
        let now = key(now);
        loop {
            let ready_first = self.ready.peek().map(|Reverse((w, _))| *w);
            match self.next_slot() {
                Some((level, slot, start))
                    if start <= now && ready_first.is_none_or(|r| start <= r) =>
                {
                    self.process(level, slot, start, now);
                    continue;
                }
                None if self.ready.is_empty() => {
                    // Only overflow timers, if any: jump to the first if it is due.
                    if let Some((&(when, _), _)) = self.overflow.first_key_value()
                        && when <= now
                    {
                        self.elapsed = self.elapsed.max(when & !((1u64 << RANGE_BITS) - 1));
                        self.refill_from_overflow();
                        continue;
                    }
                }
                _ => {}
            }
            if self
                .ready
                .peek()
                .is_some_and(|Reverse((when, _))| *when <= now)
                && let Some(Reverse((when, item))) = self.ready.pop()
            {
                self.len -= 1;
                return Some((time(when), item));
            }
            if now > self.elapsed {
                self.elapsed = now;
                self.refill_from_overflow();
            }
            debug_assert!(self.placement_holds());
            return None;
        }
    }

    /// The placement invariant, checked in debug builds and tests.
    pub fn placement_holds(&self) -> bool {
        self.levels.iter().enumerate().all(|(level, l)| {
            l.slots.iter().enumerate().all(|(slot, items)| {
                (l.occupied >> slot & 1 == 1) != items.is_empty()
                    && items.iter().all(|&(when, _)| {
                        when > self.elapsed
                            && level_for(self.elapsed, when) == level
                            && slot_for(when, level) == slot
                    })
            })
        }) && self
            .overflow
            .keys()
            .all(|&(when, _)| level_for(self.elapsed, when) >= LEVELS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    fn drain(w: &mut Wheel<u32>, now: i64) -> Vec<(i64, u32)> {
        std::iter::from_fn(|| w.pop_due(Timestamp(now)))
            .map(|(t, i)| (t.0, i))
            .collect()
    }

    #[test]
    fn fires_each_timer_at_its_millisecond_in_order() {
        let mut w = Wheel::new();
        w.pop_due(Timestamp(T0));
        for (i, d) in [63, 64, 65, 4095, 4096, 1, 0, 64].iter().enumerate() {
            w.insert(Timestamp(T0 + d), i as u32);
        }
        assert_eq!(drain(&mut w, T0 - 1), vec![]);
        assert_eq!(drain(&mut w, T0), vec![(T0, 6)]);
        assert_eq!(drain(&mut w, T0 + 63), vec![(T0 + 1, 5), (T0 + 63, 0)]);
        assert_eq!(drain(&mut w, T0 + 64), vec![(T0 + 64, 1), (T0 + 64, 7)]);
        assert_eq!(drain(&mut w, T0 + 4095), vec![(T0 + 65, 2), (T0 + 4095, 3)]);
        assert_eq!(drain(&mut w, T0 + 10_000), vec![(T0 + 4096, 4)]);
        assert!(w.is_empty());
    }

    #[test]
    fn a_timer_added_already_due_fires_at_once() {
        let mut w = Wheel::new();
        w.insert(Timestamp(T0 + 100), 1);
        assert_eq!(drain(&mut w, T0 + 50), vec![]);
        w.insert(Timestamp(T0 + 10), 2);
        w.insert(Timestamp(T0 + 50), 3);
        assert_eq!(drain(&mut w, T0 + 50), vec![(T0 + 10, 2), (T0 + 50, 3)]);
        assert_eq!(drain(&mut w, T0 + 100), vec![(T0 + 100, 1)]);
    }

    #[test]
    fn far_timers_go_through_the_overflow() {
        let mut w = Wheel::new();
        let years = |n: i64| n * 366 * 24 * 3_600_000;
        w.insert(Timestamp(T0 + years(200)), 1);
        w.insert(Timestamp(T0 + years(1)), 2);
        w.insert(Timestamp(-5), 3);
        assert_eq!(drain(&mut w, T0), vec![(-5, 3)]);
        assert_eq!(drain(&mut w, T0 + years(150)), vec![(T0 + years(1), 2)]);
        assert_eq!(drain(&mut w, T0 + years(300)), vec![(T0 + years(200), 1)]);
        assert!(w.placement_holds());
    }

    #[test]
    fn ninety_day_waits_and_an_empty_stretch() {
        let mut w = Wheel::new();
        let day = 86_400_000;
        for i in 0..1000u32 {
            w.insert(Timestamp(T0 + 90 * day + i64::from(i % 7) * 1000), i);
        }
        assert_eq!(drain(&mut w, T0 + 90 * day - 1).len(), 0);
        let fired = drain(&mut w, T0 + 91 * day);
        assert_eq!(fired.len(), 1000);
        assert!(fired.windows(2).all(|p| p[0] <= p[1]));
    }

    proptest! {
        /// Against a `BTreeSet` model: random inserts at distances from 0 ms to
        /// centuries (some already due) and random clock steps give the same
        /// timers in the same order.
        #[test]
        fn matches_an_ordered_set(ops in prop::collection::vec((0u8..4, 0u32..64, 0i64..20), 1..300)) {
            let mut w = Wheel::new();
            let mut model: BTreeSet<(i64, u32)> = BTreeSet::new();
            let mut now = T0;
            let mut next_id = 0u32;
            for (op, a, b) in ops {
                match op {
                    0 | 1 => {
                        // Distances spread over every level: 2^(2b) ms plus jitter.
                        let delta = (1i64 << (2 * b)) + i64::from(a) - 10;
                        let d = now + if op == 0 { delta } else { -delta.min(1000) };
                        w.insert(Timestamp(d), next_id);
                        model.insert((d, next_id));
                        next_id += 1;
                    }
                    _ => {
                        now += (1i64 << (2 * b)) + i64::from(a);
                        let got = drain(&mut w, now);
                        let mut want = Vec::new();
                        while let Some(&(d, i)) = model.first() {
                            if d > now { break; }
                            model.pop_first();
                            want.push((d, i));
                        }
                        prop_assert_eq!(got, want);
                        prop_assert!(w.placement_holds());
                    }
                }
                prop_assert_eq!(w.len(), model.len());
            }
            let got = drain(&mut w, i64::MAX);
            let want: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(got, want);
        }
    }
}
