//! The simulator's contacts, by position (first-seen order).
//!
//! In fixed-size chunks rather than one `Vec`: a `Vec` of a million 320-byte
//! entries doubles its way up, and each doubling copies every state and
//! touches a fresh buffer twice the size, whose pages the kernel must first
//! zero (on this project's VMs the kernel's page zeroing alone was a fifth of
//! the fold's time at 1M contacts, not all of it the list's). Chunks are
//! allocated once at their full size and never move: every page is faulted in
//! once, and growing costs nothing but the new chunk. Peak memory is the list
//! itself, not an old buffer and one twice its size at once.

use std::sync::Arc;

use crate::domain::ContactState;
use crate::prefetch::prefetch;

/// Contacts per chunk, as a power of two: 4,096 entries are 1.3 MB, large
/// enough that the chunk table (a few hundred pointers at 1M contacts) stays
/// cached; a small simulation reserves one chunk and touches only the pages
/// its contacts use.
const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

/// A contact's id and state. Aligned to a cache line, and sized to whole
/// lines without padding (a test holds it so): every contact then spans
/// exactly the lines its bytes need, and a prefetch of one asks for no line
/// of a neighbour. At 320 bytes a contact is five lines; at 336 bytes, as it
/// once was, most straddled six or seven.
#[repr(align(64))]
pub(super) struct Contact {
    pub(super) id: Arc<str>,
    pub(super) state: ContactState,
}

#[derive(Default)]
pub(super) struct ContactList {
    /// Every chunk but the last holds exactly `CHUNK` contacts; none ever
    /// grows past its first allocation.
    chunks: Vec<Vec<Contact>>,
}

impl ContactList {
    pub(super) fn len(&self) -> usize {
        self.chunks
            .last()
            .map_or(0, |last| (self.chunks.len() - 1) * CHUNK + last.len())
    }

    #[inline]
    pub(super) fn get(&self, pos: u32) -> Option<&Contact> {
        let pos = pos as usize;
        self.chunks.get(pos >> CHUNK_BITS)?.get(pos & (CHUNK - 1))
    }

    #[inline]
    pub(super) fn get_mut(&mut self, pos: u32) -> Option<&mut Contact> {
        let pos = pos as usize;
        self.chunks
            .get_mut(pos >> CHUNK_BITS)?
            .get_mut(pos & (CHUNK - 1))
    }

    /// Appends a contact at position `len()`.
    pub(super) fn push(&mut self, c: Contact) {
        let last = match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last,
            _ => {
                self.chunks.push(Vec::with_capacity(CHUNK));
                let Some(last) = self.chunks.last_mut() else {
                    unreachable!("a chunk was just pushed")
                };
                last
            }
        };
        last.push(c);
        // New contacts take the next slot, a few events from now: a slot is
        // written whole, and without the hint each of its lines would be
        // fetched (or first zeroed by the kernel) while the fold waits.
        if let Some(next) = last.spare_capacity_mut().first() {
            prefetch(next);
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Contact> {
        self.chunks.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_hold_across_chunks() {
        let mut list = ContactList::default();
        assert_eq!(list.len(), 0);
        let n = 2 * CHUNK + 3;
        for i in 0..n {
            list.push(Contact {
                id: Arc::from(format!("c{i}")),
                state: ContactState::default(),
            });
        }
        assert_eq!(list.len(), n);
        for i in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, n - 1] {
            assert_eq!(&*list.get(i as u32).expect("pushed").id, format!("c{i}"));
        }
        assert!(list.get(n as u32).is_none());
        list.get_mut(CHUNK as u32)
            .expect("pushed")
            .state
            .recent_events[0] = 3;
        assert_eq!(
            list.get(CHUNK as u32).expect("pushed").state.recent_events[0],
            3
        );
        let ids: Vec<String> = list.iter().map(|c| c.id.to_string()).collect();
        assert_eq!(ids.len(), n);
        assert_eq!(ids[CHUNK], format!("c{CHUNK}"));
        // No chunk was ever reallocated: each still has its first capacity.
        assert!(list.chunks.iter().all(|c| c.capacity() == CHUNK));
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_contact_is_whole_cache_lines_without_padding() {
        // Were the state to grow, the alignment would round a contact up to
        // the next line (up to 63 bytes a contact, paid in memory the kernel
        // zeroes): shrink it back, or weigh that and change this test.
        let unpadded = std::mem::size_of::<(Arc<str>, ContactState)>();
        assert_eq!(
            std::mem::size_of::<Contact>(),
            unpadded,
            "{unpadded} bytes are not whole lines"
        );
    }
}
