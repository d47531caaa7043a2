//! The event-time merge of a partition's input topics (docs/semantics.md,
//! "Time in `run`"): records wait here, per partition and topic in offset
//! order, until the partition may fold the one with the lowest `occurred_at`
//! among its topics' heads. A topic with nothing buffered holds the others
//! back: without limit while it is known to have records not yet fetched,
//! and for `processing.merge_wait` otherwise (after Kafka Streams'
//! `max.task.idle.ms`). Pure bookkeeping: the caller supplies the time and
//! whether a topic is read to its end.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::domain::Event;

/// A record that cannot be folded: its reason, key and value (for the dead
/// letter).
pub type Refused = (crate::source::Rejected, Vec<u8>, Vec<u8>);

/// One polled input record, decoded or refused.
pub struct Buffered {
    pub offset: i64,
    pub record: Result<Event, Refused>,
}

/// Whether a topic partition with nothing buffered has records left to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Read to its end: wait for it up to the merge wait only.
    Reached,
    /// Records exist that have not arrived: wait for them.
    Behind,
}

#[derive(Default)]
struct Queues {
    /// Per input topic (in the config's order), in offset order.
    queues: Vec<VecDeque<Buffered>>,
    /// Per topic: the next offset after the last record buffered, so that a
    /// record fetched again (after a pause, around a seek) is not taken twice.
    fetched_next: Vec<Option<i64>>,
    /// Per topic: since when it has held the partition back with nothing
    /// buffered; cleared when a record of it arrives.
    waiting_since: Vec<Option<Instant>>,
}

/// The buffers of every partition held.
pub struct Merge {
    topics: usize,
    parts: HashMap<u32, Queues>,
}

impl Merge {
    pub fn new(topics: usize) -> Self {
        Merge {
            topics,
            parts: HashMap::new(),
        }
    }

    fn part(&mut self, partition: u32) -> &mut Queues {
        let n = self.topics;
        self.parts.entry(partition).or_insert_with(|| Queues {
            queues: (0..n).map(|_| VecDeque::new()).collect(),
            fetched_next: vec![None; n],
            waiting_since: vec![None; n],
        })
    }

    /// Buffers a record; false (and nothing kept) when it was buffered
    /// already.
    pub fn push(&mut self, partition: u32, topic: usize, b: Buffered) -> bool {
        let q = self.part(partition);
        if q.fetched_next[topic].is_some_and(|n| b.offset < n) {
            return false;
        }
        q.fetched_next[topic] = Some(b.offset + 1);
        q.waiting_since[topic] = None;
        q.queues[topic].push_back(b);
        true
    }

    /// Records buffered for one topic of a partition.
    pub fn len(&self, partition: u32, topic: usize) -> usize {
        self.parts
            .get(&partition)
            .map_or(0, |q| q.queues[topic].len())
    }

    /// Whether a partition has anything buffered.
    pub fn holds(&self, partition: u32) -> bool {
        self.parts
            .get(&partition)
            .is_some_and(|q| q.queues.iter().any(|t| !t.is_empty()))
    }

    /// Partitions with anything buffered.
    pub fn holding(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .parts
            .iter()
            .filter(|(_, q)| q.queues.iter().any(|t| !t.is_empty()))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Forgets a partition (revoked, or sought back: read again).
    pub fn forget(&mut self, partition: u32) {
        self.parts.remove(&partition);
    }

    /// The topic whose head the partition folds next, if it may fold one
    /// now. A refused record goes first (it moves no clock); otherwise the
    /// lowest `occurred_at`, ties to the topic listed first. `end(topic,
    /// next offset after what it buffered)` says whether a topic with
    /// nothing buffered is read to its end.
    pub fn next(
        &mut self,
        partition: u32,
        now: Instant,
        wait: Duration,
        mut end: impl FnMut(usize, Option<i64>) -> End,
    ) -> Option<usize> {
        let q = self.parts.get_mut(&partition)?;
        let mut best: Option<(crate::domain::Timestamp, usize)> = None;
        let mut empty = Vec::new();
        for (i, t) in q.queues.iter().enumerate() {
            match t.front() {
                None => empty.push(i),
                Some(Buffered { record: Err(_), .. }) => return Some(i),
                Some(Buffered { record: Ok(ev), .. }) => {
                    if best.is_none_or(|(at, _)| ev.occurred_at < at) {
                        best = Some((ev.occurred_at, i));
                    }
                }
            }
        }
        let (_, i) = best?;
        let mut blocked = false;
        for t in empty {
            let since = *q.waiting_since[t].get_or_insert(now);
            match end(t, q.fetched_next[t]) {
                End::Behind => blocked = true,
                End::Reached if now.duration_since(since) < wait => blocked = true,
                End::Reached => {}
            }
        }
        (!blocked).then_some(i)
    }

    /// Takes the head of a topic's buffer.
    pub fn pop(&mut self, partition: u32, topic: usize) -> Option<Buffered> {
        self.parts
            .get_mut(&partition)
            .and_then(|q| q.queues[topic].pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Timestamp;

    fn ev(at: i64) -> Result<Event, Refused> {
        Ok(Event {
            event_id: format!("e{at}"),
            name: "checkout".into(),
            contact_id: "c".into(),
            occurred_at: Timestamp(at),
            merchant_id: None,
            order_id: None,
            total_cents: None,
            list_id: None,
            attributes: Vec::new(),
        })
    }

    fn b(offset: i64, record: Result<Event, Refused>) -> Buffered {
        Buffered { offset, record }
    }

    #[test]
    fn the_lowest_head_goes_first_and_an_empty_topic_holds_the_rest_back() {
        let mut m = Merge::new(2);
        let t0 = Instant::now();
        let wait = Duration::from_secs(2);
        assert!(m.push(0, 0, b(0, ev(30))));
        assert!(m.push(0, 1, b(0, ev(10))));
        assert!(m.push(0, 1, b(1, ev(40))));
        assert!(!m.push(0, 1, b(1, ev(40))), "fetched again: not twice");
        let reached = |_, _| End::Reached;
        assert_eq!(m.next(0, t0, wait, reached), Some(1));
        m.pop(0, 1);
        assert_eq!(m.next(0, t0, wait, reached), Some(0));
        m.pop(0, 0);
        // Topic 0 is empty: behind, it holds topic 1 back however long.
        assert_eq!(m.next(0, t0, wait, |_, _| End::Behind), None);
        assert_eq!(m.next(0, t0 + 10 * wait, wait, |_, _| End::Behind), None);
        // Read to its end: for the merge wait, counted from the first hold.
        let m2 = &mut Merge::new(2);
        m2.push(0, 1, b(0, ev(40)));
        assert_eq!(m2.next(0, t0, wait, reached), None);
        assert_eq!(m2.next(0, t0 + wait / 2, wait, reached), None);
        assert_eq!(m2.next(0, t0 + wait, wait, reached), Some(1));
        // A record of the awaited topic starts the wait over next time.
        m2.push(0, 0, b(0, ev(50)));
        m2.pop(0, 0);
        assert_eq!(m2.next(0, t0 + wait, wait, reached), None);
    }

    #[test]
    fn a_refused_record_goes_at_once_and_ties_go_to_the_first_topic() {
        let mut m = Merge::new(2);
        let t0 = Instant::now();
        m.push(0, 0, b(0, ev(5)));
        m.push(0, 1, b(0, ev(5)));
        assert_eq!(m.next(0, t0, Duration::ZERO, |_, _| End::Behind), Some(0));
        m.push(
            3,
            1,
            b(
                7,
                Err((
                    crate::source::Rejected::new("malformed", "bad"),
                    vec![],
                    vec![],
                )),
            ),
        );
        assert_eq!(
            m.next(3, t0, Duration::from_secs(9), |_, _| End::Behind),
            Some(1)
        );
        assert_eq!(m.holding(), vec![0, 3]);
        m.forget(3);
        assert_eq!(m.holding(), vec![0]);
    }
}
