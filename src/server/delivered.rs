//! The entries a session has finished, by number: what a repeated request is answered from
//! after a connection drops (the sender asks again for what it had not heard confirmed).
//!
//! The sender numbers entries in the order it reads them, and they finish roughly in that
//! order, so they are kept as ranges of consecutive numbers. Memory follows the gaps (entries
//! still in flight, or failed, among finished ones), not the number of entries finished: a
//! session of ten million small files holds a few ranges, where a set of numbers held
//! hundreds of megabytes.

use std::collections::BTreeMap;

/// Finished entry numbers, as disjoint ranges that do not touch.
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    /// First number → last number, inclusive.
    ranges: BTreeMap<u64, u64>,
}

impl Delivered {
    /// Whether `n` is finished.
    pub(crate) fn contains(&self, n: u64) -> bool {
        self.ranges
            .range(..=n)
            .next_back()
            .is_some_and(|(_, &last)| n <= last)
    }

    /// Marks `n` finished, joining it to the ranges on either side.
    pub(crate) fn insert(&mut self, n: u64) {
        if self.contains(n) {
            return;
        }
        let before = self
            .ranges
            .range(..n)
            .next_back()
            .filter(|(_, &last)| last.checked_add(1) == Some(n))
            .map(|(&first, _)| first);
        let after = n
            .checked_add(1)
            .and_then(|next| self.ranges.remove_entry(&next));
        let first = before.unwrap_or(n);
        let last = after.map_or(n, |(_, last)| last);
        self.ranges.insert(first, last);
    }

    /// Nothing finished.
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many ranges are held (what its memory follows).
    #[cfg(test)]
    fn ranges(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn in_order_is_one_range_and_gaps_close() {
        let mut d = Delivered::default();
        assert!(d.is_empty() && !d.contains(0));
        for n in 0..100_000 {
            d.insert(n);
        }
        assert_eq!(d.ranges(), 1);
        assert!(d.contains(0) && d.contains(99_999) && !d.contains(100_000));
        // Out of order: a gap stays one more range until it is filled.
        d.insert(100_001);
        d.insert(100_003);
        assert_eq!(d.ranges(), 3);
        assert!(!d.contains(100_002));
        d.insert(100_002);
        assert_eq!(d.ranges(), 2);
        d.insert(100_000);
        assert_eq!(d.ranges(), 1);
        // The ends of the number space.
        d.insert(u64::MAX);
        d.insert(u64::MAX - 1);
        assert!(d.contains(u64::MAX) && d.contains(u64::MAX - 1) && !d.contains(u64::MAX - 2));
        assert_eq!(d.ranges(), 2);
    }

    proptest! {
        /// The same answers as a set of numbers, for any order of insertions, with ranges
        /// that are disjoint, do not touch, and are as few as the numbers allow.
        #[test]
        fn behaves_like_a_set(ns in proptest::collection::vec(0u64..200, 0..300)) {
            let mut d = Delivered::default();
            let mut set = BTreeSet::new();
            for &n in &ns {
                d.insert(n);
                set.insert(n);
            }
            for n in 0..210 {
                prop_assert_eq!(d.contains(n), set.contains(&n), "n = {}", n);
            }
            let runs = set.iter().zip(set.iter().skip(1)).filter(|(a, b)| **b != **a + 1).count()
                + usize::from(!set.is_empty());
            prop_assert_eq!(d.ranges(), runs);
        }
    }
}
