//! Coupon pools: codes handed out in a fixed order, each at most once.

use std::sync::Arc;

use super::definition::{Definitions, PoolIdx};
use crate::prefetch::prefetch_arc;

/// The assignable share of one pool. Partition `p` of `n` owns the codes at
/// indices `p, p + n, p + 2n, ...`, so processes never need to coordinate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolState {
    codes: Arc<[Arc<str>]>,
    partition: usize,
    partitions: usize,
    /// How many codes of this share were handed out.
    pub taken: u64,
    pub low_warned: bool,
    low_stock: u64,
}

impl PoolState {
    fn share_len(&self) -> u64 {
        let len = self.codes.len();
        if self.partition >= len {
            0
        } else {
            ((len - self.partition - 1) / self.partitions + 1) as u64
        }
    }

    pub fn remaining(&self) -> u64 {
        self.share_len().saturating_sub(self.taken)
    }
}

/// A fingerprint of the first `taken` codes that partition `partition` of
/// `partitions` hands out of `codes` (xxh3-64 of each code and a newline, in
/// order); None if the pool has fewer. Kept with a partition's coupon
/// progress, it tells whether a pool still has those codes at those places.
pub fn handed_out_fingerprint(
    codes: &[Arc<str>],
    partition: usize,
    partitions: usize,
    taken: u64,
) -> Option<u64> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut i = partition;
    for _ in 0..taken {
        h.update(codes.get(i)?.as_bytes());
        h.update(b"\n");
        i += partitions.max(1);
    }
    Some(h.digest())
}

/// What taking a code from a pool gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    Code {
        code: Arc<str>,
        /// `Some(remaining)` the first time the share falls to its low-stock mark.
        low: Option<u64>,
    },
    Exhausted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponPools {
    pools: Vec<PoolState>,
}

impl CouponPools {
    /// The whole of every pool (a single partition).
    pub fn new(defs: &Definitions) -> Self {
        Self::for_partition(defs, 0, 1)
    }

    pub fn for_partition(defs: &Definitions, partition: usize, partitions: usize) -> Self {
        let partitions = partitions.max(1);
        CouponPools {
            pools: defs
                .pools
                .iter()
                .map(|p| PoolState {
                    codes: p.codes.clone(),
                    partition,
                    partitions,
                    taken: 0,
                    low_warned: false,
                    // The mark scales with the share so each partition warns in time.
                    low_stock: p.low_stock.div_ceil(partitions as u64),
                })
                .collect(),
        }
    }

    pub fn pool(&self, idx: PoolIdx) -> &PoolState {
        &self.pools[idx as usize]
    }

    /// To restore a share's progress from a store.
    pub fn pool_mut(&mut self, idx: PoolIdx) -> &mut PoolState {
        &mut self.pools[idx as usize]
    }

    pub fn take(&mut self, idx: PoolIdx) -> Take {
        let p = &mut self.pools[idx as usize];
        if p.remaining() == 0 {
            return Take::Exhausted;
        }
        let i = p.partition + p.taken as usize * p.partitions;
        p.taken += 1;
        let code = p.codes[i].clone();
        // Each code is its own allocation, touched first when handed out:
        // start loading the next one's now, a few events before it is needed.
        if let Some(next) = p.codes.get(i + p.partitions) {
            prefetch_arc(next);
        }
        let remaining = p.remaining();
        let low = if !p.low_warned && remaining <= p.low_stock {
            p.low_warned = true;
            Some(remaining)
        } else {
            None
        };
        Take::Code { code, low }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::definition::PoolDef;
    use std::collections::BTreeSet;

    fn defs(n: usize, low: u64) -> Definitions {
        Definitions::new(
            vec![],
            vec![PoolDef {
                name: "p".into(),
                codes: (0..n).map(|i| Arc::from(format!("C{i}"))).collect(),
                low_stock: low,
                expires_at: None,
            }],
            vec![],
            vec![],
            vec![],
        )
    }

    #[test]
    fn hands_out_in_order_then_exhausts_and_warns_once() {
        let d = defs(3, 1);
        let mut pools = CouponPools::new(&d);
        assert_eq!(
            pools.take(0),
            Take::Code {
                code: "C0".into(),
                low: None
            }
        );
        assert_eq!(
            pools.take(0),
            Take::Code {
                code: "C1".into(),
                low: Some(1)
            }
        );
        assert_eq!(
            pools.take(0),
            Take::Code {
                code: "C2".into(),
                low: None
            }
        );
        assert_eq!(pools.take(0), Take::Exhausted);
        assert_eq!(pools.take(0), Take::Exhausted);
    }

    #[test]
    fn partitions_split_the_pool_without_overlap() {
        for n in [1usize, 2, 3, 7, 10, 11] {
            let d = defs(10, 0);
            let mut seen = BTreeSet::new();
            for p in 0..n {
                let mut pools = CouponPools::for_partition(&d, p, n);
                while let Take::Code { code, .. } = pools.take(0) {
                    assert!(
                        seen.insert(code),
                        "code handed out twice with {n} partitions"
                    );
                }
            }
            assert_eq!(seen.len(), 10, "{n} partitions must cover the pool");
        }
    }
}
