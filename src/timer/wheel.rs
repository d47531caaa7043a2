//! A hierarchical timing wheel: pending waits bucketed by expiry, so that adding
//! one is an append and the clock jumps straight to the next occupied bucket.
//!
//! Shape (after tokio's wheel and Kafka's purgatory): `LEVELS` levels of 64
//! slots. A slot of level `l` spans `2^(12 + 6l)` milliseconds, so level 0
//! holds about 4 s per slot and level 4 a span of about 2.2 years; timers
//! further away than the wheel reaches wait in an ordered overflow map.
//!
//! Placement: a timer due at `d` sits at the level of the highest 6-bit group
//! (above the low 12 bits) in which `d` and the wheel's time (`elapsed`)
//! differ, in slot `(d >> (12 + 6l)) & 63`. Invariant
//! ([`Wheel::placement_holds`]): every timer in the wheel is after `elapsed`,
//! shares with it all bits above its level's span and sits at or after
//! `elapsed`'s slot on that level, so "the next occupied slot" never wraps,
//! and the lowest occupied level always holds the earliest timers.
//!
//! Taking timers: the earliest occupied slot is processed when its start is
//! due. A level-0 slot is sorted once and appended to the `run`, a queue in
//! `(deadline, key)` order, and `elapsed` moves to the slot's last
//! millisecond; a higher slot's timers cascade to lower levels (those already
//! due go to the `ready` heap instead). A timer added at or before `elapsed`
//! goes to `ready`. Timers come out as the smaller of the run's and the heap's
//! first, in exact `(deadline, key)` order, which makes the engine's output
//! deterministic.
//!
//! Why 4 s and not 1 ms at level 0: a 1 ms level and a 64 ms level cost every
//! timer two more moves and a heap push and pop; sorting a slot of a few
//! timers costs less (measured with callgrind on the fold benchmark).
//!
//! Lanes: most timers arrive in expiry order (events come in time order and
//! most waits share a duration), so before the levels a timer is appended to
//! one of up to `LANES` sorted queues, the one with the latest last timer not
//! after it (lanes stay ordered by their last timer, latest first, so the
//! first that fits is that one). A lane costs a timer one append and one
//! comparison per lane when taken; the levels cost it a move per level it
//! cascades through. Only a timer that fits no lane, with every lane in
//! use, goes to the levels.
//!
//! Cancellation is lazy: the engine ignores a timer that no longer matches a
//! waiting entry, so a re-entry costs one append and no search.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use crate::domain::Timestamp;

/// Bits of a level-0 slot's span: 4,096 ms.
const FINE_BITS: u32 = 12;
const BITS: u32 = 6;
const SLOTS: usize = 1 << BITS;
const LEVELS: usize = 5;
/// Sorted queues tried before the levels.
const LANES: usize = 4;
/// A drained slot keeps a buffer up to this many timers.
const SLOT_KEEP: usize = 256;
/// Distance from `elapsed` beyond which a timer waits in the overflow map.
const RANGE_BITS: u32 = FINE_BITS + BITS * LEVELS as u32;

/// Timestamps as unsigned, order-preserving wheel time (pre-1970 instants too).
fn key(t: Timestamp) -> u64 {
    (t.0 as u64) ^ (1 << 63)
}

fn time(k: u64) -> Timestamp {
    Timestamp((k ^ (1 << 63)) as i64)
}

/// The bit position where a level's slots start.
fn shift(level: usize) -> u32 {
    FINE_BITS + BITS * level as u32
}

fn level_for(elapsed: u64, when: u64) -> usize {
    let masked = ((elapsed ^ when) >> FINE_BITS) | (SLOTS as u64 - 1);
    let significant = 63 - masked.leading_zeros();
    (significant / BITS) as usize
}

fn slot_for(when: u64, level: usize) -> usize {
    ((when >> shift(level)) & (SLOTS as u64 - 1)) as usize
}

struct Level<T> {
    /// Bit `s` set when slot `s` holds timers.
    occupied: u64,
    slots: Vec<Vec<(u64, T)>>,
}

/// Where the earliest timer out of the levels is.
#[derive(Clone, Copy)]
enum Source {
    Run,
    Ready,
    Lane(usize),
}

pub struct Wheel<T> {
    elapsed: u64,
    levels: Vec<Level<T>>,
    /// Bit `l` set when level `l` holds timers.
    levels_occupied: u32,
    overflow: BTreeMap<(u64, T), ()>,
    /// Sorted level-0 slots, all before every timer still in the levels.
    run: VecDeque<(u64, T)>,
    /// Timers due (or added at or before `elapsed`) in no particular order.
    ready: BinaryHeap<Reverse<(u64, T)>>,
    /// Sorted queues, none empty, ordered by their last timer, latest first.
    lanes: Vec<VecDeque<(u64, T)>>,
    max_lanes: usize,
    /// No timer held is due before this: `pop_due` before it answers at once.
    /// The engine asks after every event, mostly when nothing is due.
    not_before: u64,
    len: usize,
    /// Where the last timer taken came from: the likeliest source of the next
    /// ones (see [`Wheel::ahead`]).
    last: Source,
    /// Whether a timer may share the deadline of the last one taken: false
    /// when `pop_due` saw none at the front of any queue (see
    /// [`Wheel::pop_same`]).
    tie: bool,
}

impl<T: Ord> Default for Wheel<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Ord> Wheel<T> {
    pub fn new() -> Self {
        Self::with_lanes(LANES)
    }

    /// A wheel with up to `max_lanes` lanes (none: every timer goes to the
    /// levels, as the tests of the levels need).
    fn with_lanes(max_lanes: usize) -> Self {
        Wheel {
            elapsed: 0,
            levels: (0..LEVELS)
                .map(|_| Level {
                    occupied: 0,
                    slots: (0..SLOTS).map(|_| Vec::new()).collect(),
                })
                .collect(),
            levels_occupied: 0,
            overflow: BTreeMap::new(),
            run: VecDeque::new(),
            ready: BinaryHeap::new(),
            lanes: Vec::new(),
            max_lanes,
            not_before: u64::MAX,
            len: 0,
            last: Source::Run,
            tie: false,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// A timer likely to come out `n` pops from now: the `n`-th after the
    /// front of the queue the last pop took from. A hint, not an answer (a
    /// timer added since, or another queue, may come first), for a caller
    /// that prefetches what the timer will touch: timers due together are
    /// mostly for unrelated contacts, whose state is out of the cache.
    pub fn ahead(&self, n: usize) -> Option<&T> {
        match self.last {
            Source::Run => self.run.get(n),
            Source::Lane(i) => self.lanes.get(i)?.get(n),
            Source::Ready => None,
        }
        .map(|(_, t)| t)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, deadline: Timestamp, item: T) {
        self.len += 1;
        let when = key(deadline);
        let fits = |&(w, ref i): &(u64, T)| w < when || (w == when && *i <= item);
        if let Some(lane) = self.lanes.iter_mut().find(|l| l.back().is_some_and(fits)) {
            self.not_before = self.not_before.min(when);
            lane.push_back((when, item));
        } else if self.lanes.len() < self.max_lanes {
            // Earlier than every lane's last timer: the new lane goes last.
            self.not_before = self.not_before.min(when);
            self.lanes.push(VecDeque::from([(when, item)]));
        } else {
            self.place(when, item);
        }
    }

    fn place(&mut self, when: u64, item: T) {
        if when <= self.elapsed {
            self.not_before = self.not_before.min(when);
            self.ready.push(Reverse((when, item)));
            return;
        }
        let level = level_for(self.elapsed, when);
        if level >= LEVELS {
            self.not_before = self.not_before.min(when);
            self.overflow.insert((when, item), ());
            return;
        }
        // The slot is processed from its start: the bound is that.
        self.not_before = self.not_before.min(when & !((1u64 << shift(level)) - 1));
        let slot = slot_for(when, level);
        let l = &mut self.levels[level];
        l.occupied |= 1 << slot;
        l.slots[slot].push((when, item));
        self.levels_occupied |= 1 << level;
    }

    /// The earliest occupied slot: (level, slot, start time).
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        if self.levels_occupied == 0 {
            return None;
        }
        // By the placement invariant the lowest occupied level holds the earliest.
        let level = self.levels_occupied.trailing_zeros() as usize;
        let occupied = self.levels[level].occupied;
        let pos = slot_for(self.elapsed, level);
        // By the placement invariant no occupied slot lies before `pos`.
        debug_assert!(
            occupied >> pos != 0,
            "occupied slot before the wheel's position"
        );
        let slot = if occupied >> pos != 0 {
            pos + (occupied >> pos).trailing_zeros() as usize
        } else {
            occupied.trailing_zeros() as usize
        };
        let base = self.elapsed & !((1u64 << shift(level + 1)) - 1);
        Some((level, slot, base + ((slot as u64) << shift(level))))
    }

    /// Empties a slot that has come due. A level-0 slot is sorted onto the
    /// run; a higher one's timers due by `now` go to `ready`, the others
    /// cascade to lower levels.
    fn process(&mut self, level: usize, slot: usize, start: u64, now: u64) {
        let l = &mut self.levels[level];
        l.occupied &= !(1 << slot);
        if l.occupied == 0 {
            self.levels_occupied &= !(1 << level);
        }
        let mut items = std::mem::take(&mut l.slots[slot]);
        if level == 0 {
            // Every timer of the slot's span is now here or in the run, so
            // anything added within it later belongs in `ready`.
            self.elapsed = self.elapsed.max(start + (1 << FINE_BITS) - 1);
            items.sort_unstable();
            self.run.extend(items.drain(..));
        } else {
            debug_assert!(start >= self.elapsed);
            self.elapsed = self.elapsed.max(start);
            for (when, item) in items.drain(..) {
                if when <= now {
                    self.ready.push(Reverse((when, item)));
                } else {
                    self.place(when, item);
                }
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

    /// The deadline of the earliest timer out of the levels, where it is, and
    /// the earliest deadline at the front of every other queue (`u64::MAX`
    /// for none): a tie with the first when equal (see [`Wheel::pop_same`]).
    fn first_out(&self) -> Option<(u64, Source, u64)> {
        fn consider<'a, T: Ord>(
            f: &'a (u64, T),
            s: Source,
            best: &mut Option<(&'a (u64, T), Source)>,
            others: &mut u64,
        ) {
            match best {
                Some((b, _)) if f >= *b => *others = (*others).min(f.0),
                _ => {
                    if let Some((b, _)) = best {
                        *others = (*others).min(b.0);
                    }
                    *best = Some((f, s));
                }
            }
        }
        let mut best = self.run.front().map(|r| (r, Source::Run));
        let mut others = u64::MAX;
        if let Some(Reverse(h)) = self.ready.peek() {
            consider(h, Source::Ready, &mut best, &mut others);
        }
        for (i, lane) in self.lanes.iter().enumerate() {
            if let Some(f) = lane.front() {
                consider(f, Source::Lane(i), &mut best, &mut others);
            }
        }
        best.map(|(t, s)| (t.0, s, others))
    }

    /// The deadline at the front of a queue.
    fn front(&self, of: Source) -> Option<u64> {
        match of {
            Source::Run => self.run.front().map(|t| t.0),
            Source::Ready => self.ready.peek().map(|Reverse(t)| t.0),
            Source::Lane(i) => self.lanes.get(i)?.front().map(|t| t.0),
        }
    }

    #[inline]
    fn take(&mut self, from: Source) -> Option<(u64, T)> {
        self.last = from;
        match from {
            Source::Run => self.run.pop_front(),
            Source::Ready => self.ready.pop().map(|Reverse(t)| t),
            Source::Lane(i) => {
                let lane = self.lanes.get_mut(i)?;
                let t = lane.pop_front();
                if lane.is_empty() {
                    // The others keep their order.
                    self.lanes.remove(i);
                }
                t
            }
        }
    }

    /// Takes the earliest timer due at or before `now`, in (deadline, item)
    /// order. When none is due the wheel's time moves to `now`.
    pub fn pop_due(&mut self, now: Timestamp) -> Option<(Timestamp, T)> {
        let now = key(now);
        if now < self.not_before {
            // No slot is due either: the wheel's time may move as below.
            if now > self.elapsed {
                self.elapsed = now;
                if !self.overflow.is_empty() {
                    self.refill_from_overflow();
                }
            }
            if now < self.not_before {
                return None;
            }
        }
        loop {
            let first = self.first_out();
            match self.next_slot() {
                Some((level, slot, start))
                    if start <= now && first.is_none_or(|(f, _, _)| start <= f) =>
                {
                    self.process(level, slot, start, now);
                    continue;
                }
                None => {
                    // Only overflow timers in the levels' stead, if any: jump
                    // to the first if it is due and before every other.
                    if let Some((&(when, _), _)) = self.overflow.first_key_value()
                        && when <= now
                        && first.is_none_or(|(f, _, _)| when <= f)
                    {
                        self.elapsed = self.elapsed.max(when & !((1u64 << RANGE_BITS) - 1));
                        self.refill_from_overflow();
                        continue;
                    }
                }
                _ => {}
            }
            if let Some((when, from, others)) = first
                && when <= now
                && let Some((when, item)) = self.take(from)
            {
                self.len -= 1;
                // A lane emptied by the take is gone and a later one has its
                // index; a deadline equal to `when` is a tie all the same.
                self.tie = others == when || self.front(from) == Some(when);
                // Timers come out in order: none left is due before it.
                self.not_before = when;
                return Some((time(when), item));
            }
            if now > self.elapsed {
                self.elapsed = now;
                self.refill_from_overflow();
            }
            self.not_before = [
                first.map(|(f, _, _)| f),
                self.next_slot().map(|(_, _, start)| start),
                self.overflow.first_key_value().map(|(&(w, _), _)| w),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(u64::MAX);
            debug_assert!(self.placement_holds());
            return None;
        }
    }

    /// Takes the next timer if it is due at exactly `at`, the deadline of the
    /// timer [`Wheel::pop_due`] just returned (nothing inserted since): how a
    /// caller that orders ties its own way collects every timer of an
    /// instant. When `pop_due` saw no tie at the front of any queue, a flag
    /// answers at once.
    #[inline]
    pub fn pop_same(&mut self, at: Timestamp) -> Option<T> {
        let at = key(at);
        debug_assert_eq!(self.not_before, at, "pop_same right after a pop_due");
        if !self.tie {
            return None;
        }
        // `pop_due` processed every slot (and overflow timer) starting at or
        // before the deadline it returned, so a tie can only be at the front
        // of the run, the heap or a lane. Only deadlines are compared until
        // one ties.
        let mut best: Option<(&T, Source)> = None;
        // Queues whose front ties: another tie remains after the take when
        // more than one does.
        let mut tied = 0;
        if let Some((w, t)) = self.run.front()
            && *w == at
        {
            tied += 1;
            best = Some((t, Source::Run));
        }
        if let Some(Reverse((w, t))) = self.ready.peek()
            && *w == at
        {
            tied += 1;
            if best.is_none_or(|(b, _)| t < b) {
                best = Some((t, Source::Ready));
            }
        }
        for (i, lane) in self.lanes.iter().enumerate() {
            if let Some((w, t)) = lane.front()
                && *w == at
            {
                tied += 1;
                if best.is_none_or(|(b, _)| t < b) {
                    best = Some((t, Source::Lane(i)));
                }
            }
        }
        let Some((_, from)) = best else {
            self.tie = false;
            return None;
        };
        let (_, item) = self.take(from)?;
        self.len -= 1;
        self.tie = tied > 1 || self.front(from) == Some(at);
        Some(item)
    }

    /// The placement invariant, checked in debug builds and tests.
    pub fn placement_holds(&self) -> bool {
        let run_sorted = self
            .run
            .iter()
            .zip(self.run.iter().skip(1))
            .all(|(a, b)| a <= b);
        let run_last = self.run.back().map(|&(w, _)| w);
        let lanes_hold = self
            .lanes
            .iter()
            .all(|l| !l.is_empty() && l.iter().zip(l.iter().skip(1)).all(|(a, b)| a <= b))
            && self
                .lanes
                .iter()
                .zip(self.lanes.iter().skip(1))
                .all(|(a, b)| a.back() > b.back());
        let held_after = self
            .run
            .iter()
            .chain(self.ready.iter().map(|Reverse(t)| t))
            .chain(self.lanes.iter().flatten())
            .chain(self.overflow.keys())
            .all(|&(w, _)| w >= self.not_before)
            && self
                .next_slot()
                .is_none_or(|(_, _, start)| start >= self.not_before);
        run_sorted
            && held_after
            && lanes_hold
            && self.levels.iter().enumerate().all(|(level, l)| {
                (self.levels_occupied >> level & 1 == 1) == (l.occupied != 0)
                    && l.slots.iter().enumerate().all(|(slot, items)| {
                        (l.occupied >> slot & 1 == 1) != items.is_empty()
                            && items.iter().all(|&(when, _)| {
                                when > self.elapsed
                                    && run_last.is_none_or(|r| when > r)
                                    && level_for(self.elapsed, when) == level
                                    && slot_for(when, level) == slot
                            })
                    })
            })
            && self
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

    /// [`drain`] taking the ties of each instant with `pop_same`.
    fn drain_ties(w: &mut Wheel<u32>, now: i64) -> Vec<(i64, u32)> {
        let mut got = Vec::new();
        while let Some((t, i)) = w.pop_due(Timestamp(now)) {
            got.push((t.0, i));
            got.extend(std::iter::from_fn(|| w.pop_same(t)).map(|i| (t.0, i)));
        }
        got
    }

    #[test]
    fn fires_each_timer_at_its_millisecond_in_order() {
        let mut w = Wheel::with_lanes(0);
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
    fn timers_added_within_a_sorted_slot_merge_in_order() {
        let mut w = Wheel::with_lanes(0);
        // The start of a level-0 slot: its span ends 4,095 ms later.
        let b = (T0 >> FINE_BITS << FINE_BITS) + (1 << FINE_BITS);
        w.pop_due(Timestamp(b - 1));
        for (i, d) in [10, 20, 4095, 4096].iter().enumerate() {
            w.insert(Timestamp(b + d), i as u32);
        }
        assert_eq!(drain(&mut w, b + 10), vec![(b + 10, 0)]);
        // The slot now sits sorted in the run; these go to the heap.
        w.insert(Timestamp(b + 15), 10);
        w.insert(Timestamp(b + 20), 9);
        w.insert(Timestamp(b + 12), 11);
        w.insert(Timestamp(b + 4095), 12);
        assert!(w.placement_holds());
        assert_eq!(
            drain(&mut w, b + 4095),
            vec![
                (b + 12, 11),
                (b + 15, 10),
                (b + 20, 1),
                (b + 20, 9),
                (b + 4095, 2),
                (b + 4095, 12)
            ]
        );
        assert_eq!(drain(&mut w, b + 5000), vec![(b + 4096, 3)]);
        assert!(w.is_empty());
    }

    #[test]
    fn a_timer_added_already_due_fires_at_once() {
        let mut w = Wheel::with_lanes(0);
        w.insert(Timestamp(T0 + 100), 1);
        assert_eq!(drain(&mut w, T0 + 50), vec![]);
        w.insert(Timestamp(T0 + 10), 2);
        w.insert(Timestamp(T0 + 50), 3);
        assert_eq!(drain(&mut w, T0 + 50), vec![(T0 + 10, 2), (T0 + 50, 3)]);
        assert_eq!(drain(&mut w, T0 + 100), vec![(T0 + 100, 1)]);
    }

    #[test]
    fn far_timers_go_through_the_overflow() {
        let mut w = Wheel::with_lanes(0);
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
    fn timers_in_order_take_the_lanes_and_the_rest_the_levels() {
        let mut w = Wheel::with_lanes(2);
        w.pop_due(Timestamp(T0));
        let day = 86_400_000;
        // Two runs in order, interleaved: one lane each.
        for i in 0..100u32 {
            w.insert(Timestamp(T0 + 90 * day + i64::from(i) * 1000), i);
            w.insert(Timestamp(T0 + 89 * day + i64::from(i) * 1000), 1000 + i);
        }
        assert_eq!(w.lanes.len(), 2);
        assert!(w.levels_occupied == 0 && w.ready.is_empty());
        // Before both lanes' last timers: to the levels.
        w.insert(Timestamp(T0 + 50 * day), 5000);
        w.insert(Timestamp(T0 + 89 * day), 999);
        assert_ne!(w.levels_occupied, 0);
        assert!(w.placement_holds());
        let fired = drain(&mut w, T0 + 91 * day);
        assert_eq!(fired.len(), 202);
        assert_eq!(fired[0], (T0 + 50 * day, 5000));
        assert_eq!(fired[1], (T0 + 89 * day, 999));
        assert_eq!(fired[2], (T0 + 89 * day, 1000));
        assert!(fired.windows(2).all(|p| p[0] <= p[1]));
        assert!(w.lanes.is_empty() && w.is_empty());
    }

    #[test]
    fn a_lane_timer_waits_for_an_earlier_overflow_timer() {
        // The wheel's time is still 0: T0 is beyond its reach, in the overflow.
        let mut w = Wheel::with_lanes(1);
        w.insert(Timestamp(T0), 0);
        w.insert(Timestamp(T0 + 20), 1);
        w.insert(Timestamp(T0 + 10), 2);
        assert_eq!(
            drain(&mut w, T0 + 20),
            vec![(T0, 0), (T0 + 10, 2), (T0 + 20, 1)]
        );
    }

    #[test]
    fn the_clock_passing_a_slots_start_cascades_it() {
        let mut w = Wheel::with_lanes(0);
        w.pop_due(Timestamp(T0));
        let far = T0 + (1 << 20);
        w.insert(Timestamp(far), 1);
        // Past the start of the timer's level-1 slot, before the timer.
        let slot_start = far & !((1 << shift(1)) - 1);
        assert!(slot_start > T0);
        assert_eq!(drain(&mut w, slot_start + 1), vec![]);
        assert!(w.placement_holds());
        w.insert(Timestamp(slot_start + 2), 2);
        assert_eq!(drain(&mut w, far), vec![(slot_start + 2, 2), (far, 1)]);
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

    #[test]
    fn ahead_names_the_coming_timers_of_an_ordered_stream() {
        for lanes in [0, LANES] {
            let mut w = Wheel::with_lanes(lanes);
            w.pop_due(Timestamp(T0));
            for i in 0..100u32 {
                w.insert(Timestamp(T0 + 1000 + i64::from(i) * 100), i);
            }
            assert_eq!(
                w.pop_due(Timestamp(T0 + 100_000)),
                Some((Timestamp(T0 + 1000), 0))
            );
            // Without lanes the levels sort the first due slot onto the run.
            assert_eq!(w.ahead(0), Some(&1), "lanes: {lanes}");
            assert_eq!(w.ahead(4), Some(&5), "lanes: {lanes}");
            let rest = drain(&mut w, T0 + 100_000);
            assert_eq!(rest.len(), 99);
            assert_eq!(w.ahead(0), None);
        }
    }

    #[test]
    fn pop_same_takes_the_ties_of_an_instant_from_every_queue() {
        let mut w = Wheel::with_lanes(1);
        w.pop_due(Timestamp(T0));
        let day = 86_400_000;
        let d = T0 + 90 * day;
        // One lane for the ordered run; the rest, a tie among it, to the levels.
        w.insert(Timestamp(d - 5), 1);
        w.insert(Timestamp(d), 2);
        w.insert(Timestamp(d - 9), 3);
        w.insert(Timestamp(d), 4);
        w.insert(Timestamp(d), 0);
        w.insert(Timestamp(d + 1), 5);
        assert_ne!(w.levels_occupied, 0);
        let now = Timestamp(d + 10);
        assert_eq!(w.pop_due(now), Some((Timestamp(d - 9), 3)));
        assert_eq!(w.pop_same(Timestamp(d - 9)), None);
        assert_eq!(w.pop_due(now), Some((Timestamp(d - 5), 1)));
        assert_eq!(w.pop_same(Timestamp(d - 5)), None);
        assert_eq!(w.pop_due(now), Some((Timestamp(d), 0)));
        let mut ties: Vec<u32> = std::iter::from_fn(|| w.pop_same(Timestamp(d))).collect();
        ties.sort_unstable();
        assert_eq!(ties, vec![2, 4]);
        assert_eq!(w.pop_due(now), Some((Timestamp(d + 1), 5)));
        assert!(w.is_empty() && w.placement_holds());
    }

    proptest! {
        /// Against a `BTreeSet` model: random inserts at distances from 0 ms to
        /// centuries (some already due) and random clock steps give the same
        /// timers in the same order, with any number of lanes (none: the
        /// levels alone).
        #[test]
        fn matches_an_ordered_set(
            lanes in 0usize..6,
            ops in prop::collection::vec((0u8..4, 0u32..64, 0i64..20), 1..300),
        ) {
            let mut w = Wheel::with_lanes(lanes);
            let mut model: BTreeSet<(i64, u32)> = BTreeSet::new();
            let mut now = T0;
            let mut next_id = 0u32;
            for (op, a, b) in ops {
                match op {
                    0 | 1 => {
                        // Distances spread over every level: 2^(2b) ms plus jitter.
                        let delta = (1i64 << (2 * b)) + i64::from(a) - 10;
                        let d = now + if op == 0 { delta } else { -delta.min(1000) };
                        // Ties at one instant come in no particular key order.
                        let id = a * 1000 + next_id;
                        w.insert(Timestamp(d), id);
                        model.insert((d, id));
                        next_id += 1;
                    }
                    _ => {
                        now += (1i64 << (2 * b)) + i64::from(a);
                        // Op 3 takes each instant's ties with `pop_same`.
                        let got = if op == 3 { drain_ties(&mut w, now) } else { drain(&mut w, now) };
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
                // A hint, but always one of the timers held.
                for n in 0..3 {
                    if let Some(&x) = w.ahead(n) {
                        prop_assert!(model.iter().any(|&(_, i)| i == x));
                    }
                }
            }
            let got = drain(&mut w, i64::MAX);
            let want: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(got, want);
        }
    }
}
