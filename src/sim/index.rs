//! The simulator's contact index: a contact id's position in the contact
//! list.
//!
//! Not a `HashMap<Arc<str>, u32>`: with a million contacts every look-up
//! misses the cache, and a batch hides those misses only if it can ask for
//! the line a coming event's slot is on before it needs it
//! ([`ContactIndex::prefetch`]) and then for the contact the slot names
//! ([`ContactIndex::candidate`]). A slot is 8 bytes and holds no key: the id
//! is compared in the contact list, whose entry the caller reads anyway.

use std::hash::BuildHasher;

use crate::prefetch::prefetch_line;

/// Open addressing with linear probing, at most half full, so that a probe
/// seldom leaves its first cache line.
pub(super) struct ContactIndex {
    /// 0: empty. Else the low 32 bits of the id's hash (a tag that spares
    /// comparing ids that merely share a slot) over the position + 1.
    slots: Vec<u64>,
    /// Each contact's hash, by position: growing re-places every contact
    /// without reading its id.
    hashes: Vec<u64>,
    /// 64 - log2(slots.len()): a hash's home slot is its top bits, which are
    /// independent of the tag's bits.
    shift: u32,
    /// Seeded per process: contact ids come from outside, and a known hash
    /// would let crafted ids pile up in one probe run. Output never depends
    /// on it (positions are first-seen order).
    hasher: foldhash::quality::RandomState,
}

const MIN_SLOTS: usize = 16;

impl Default for ContactIndex {
    fn default() -> Self {
        ContactIndex {
            slots: vec![0; MIN_SLOTS],
            hashes: Vec::new(),
            shift: 64 - MIN_SLOTS.trailing_zeros(),
            hasher: foldhash::quality::RandomState::default(),
        }
    }
}

impl ContactIndex {
    pub(super) fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.hashes.len()
    }

    fn home(&self, h: u64) -> usize {
        (h >> self.shift) as usize
    }

    fn slot(h: u64, pos: u32) -> u64 {
        (h << 32) | (u64::from(pos) + 1)
    }

    /// Asks the CPU for the line holding the home slot of hash `h`.
    pub(super) fn prefetch(&self, h: u64) {
        prefetch_line((&self.slots[self.home(h)] as *const u64).cast());
    }

    /// The first contact whose hash shares `h`'s tag: the contact `h` was
    /// hashed from, nearly always, if it is known. A hint, unverified.
    pub(super) fn candidate(&self, h: u64) -> Option<u32> {
        self.find(h, |_| true)
    }

    /// The position of the contact whose id hashed to `h`; `is_id(pos)` tells
    /// whether the contact at `pos` has the id (a tag can be shared).
    pub(super) fn find(&self, h: u64, mut is_id: impl FnMut(u32) -> bool) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let tag = h << 32;
        let mut i = self.home(h);
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if s & !0xFFFF_FFFF == tag {
                let pos = (s as u32).wrapping_sub(1);
                if is_id(pos) {
                    return Some(pos);
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds a contact, not known yet, whose id hashed to `h`; returns its
    /// position, the next one. `None` when positions are exhausted (u32).
    pub(super) fn insert(&mut self, h: u64) -> Option<u32> {
        let pos = u32::try_from(self.hashes.len())
            .ok()
            .filter(|&p| p < u32::MAX)?;
        if (self.hashes.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        self.place(h, pos);
        self.hashes.push(h);
        Some(pos)
    }

    fn place(&mut self, h: u64, pos: u32) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(h);
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = Self::slot(h, pos);
    }

    fn grow(&mut self) {
        self.slots = vec![0; self.slots.len() * 2];
        self.shift -= 1;
        for pos in 0..self.hashes.len() {
            // Positions fit: `insert` refused any beyond u32.
            self.place(self.hashes[pos], pos as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// Adds `id` unless known; its position either way.
    fn add(ix: &mut ContactIndex, ids: &mut Vec<String>, id: &str) -> u32 {
        let h = ix.hash(id);
        if let Some(p) = ix.find(h, |p| ids[p as usize] == id) {
            return p;
        }
        let p = ix.insert(h).expect("room");
        assert_eq!(p as usize, ids.len());
        ids.push(id.to_owned());
        p
    }

    #[test]
    fn contacts_keep_their_first_seen_positions_across_growth() {
        let (mut ix, mut ids) = (ContactIndex::default(), Vec::new());
        for i in 0..10_000 {
            assert_eq!(add(&mut ix, &mut ids, &format!("c{i}")), i);
        }
        for i in (0..10_000).rev() {
            let id = format!("c{i}");
            let h = ix.hash(&id);
            assert_eq!(ix.find(h, |p| ids[p as usize] == id), Some(i));
            assert_eq!(ix.candidate(h), Some(i), "no tag shared among so few");
        }
        assert_eq!(
            ix.find(ix.hash("c10000"), |p| ids[p as usize] == "c10000"),
            None
        );
        assert!(ix.slots.len() >= 2 * ix.len(), "at most half full");
    }

    #[test]
    fn ids_sharing_a_tag_are_told_apart_by_the_id() {
        // Every id hashes alike: the worst a tag can do.
        let mut ix = ContactIndex::default();
        for pos in 0..40 {
            assert_eq!(ix.insert(7), Some(pos));
        }
        for want in 0..40 {
            assert_eq!(ix.find(7, |p| p == want), Some(want));
        }
        assert_eq!(ix.find(7, |_| false), None);
        assert_eq!(ix.candidate(7), Some(0));
    }

    proptest! {
        #[test]
        fn the_index_agrees_with_a_hash_map(ids in prop::collection::vec("[a-e]{1,3}", 0..300)) {
            let (mut ix, mut seen) = (ContactIndex::default(), Vec::new());
            let mut model: HashMap<String, u32> = HashMap::new();
            for id in &ids {
                let n = model.len() as u32;
                let want = *model.entry(id.clone()).or_insert(n);
                prop_assert_eq!(add(&mut ix, &mut seen, id), want);
            }
            for (id, &pos) in &model {
                prop_assert_eq!(ix.find(ix.hash(id), |p| seen[p as usize] == *id), Some(pos));
            }
            prop_assert_eq!(ix.len(), model.len());
        }
    }
}
