//! A set of block numbers kept as disjoint, non-adjacent half-open ranges.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Changed blocks of one volume, in units of `vfsdr_common::BLOCK_SIZE`.
///
/// Insertion merges overlapping and adjacent ranges, so a sequential write of any length is one
/// entry, and re-inserting blocks already present changes nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockSet {
    /// start -> end (exclusive); ranges are disjoint and never touch.
    ranges: BTreeMap<u64, u64>,
    blocks: u64,
}

/// A run of blocks `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRange {
    pub start: u64,
    pub end: u64,
}

impl BlockSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the blocks covering the byte range `[offset, offset + len)`.
    pub fn insert_bytes(&mut self, offset: u64, len: u64, block_size: u64) {
        if len == 0 {
            return;
        }
        let start = offset / block_size;
        let end = (offset + len).div_ceil(block_size);
        self.insert(start, end);
    }

    /// Adds the blocks `[start, end)`.
    pub fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // Merge with a range that starts before `start` and reaches it.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e >= start
        {
            if e >= end {
                return;
            }
            start = s;
            end = end.max(e);
            self.ranges.remove(&s);
            self.blocks -= e - s;
        }
        // Absorb every range that starts inside or right at the end of [start, end].
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            self.ranges.remove(&s);
            self.blocks -= e - s;
            end = end.max(e);
        }
        self.ranges.insert(start, end);
        self.blocks += end - start;
    }

    pub fn contains(&self, block: u64) -> bool {
        self.ranges
            .range(..=block)
            .next_back()
            .is_some_and(|(_, &e)| block < e)
    }

    /// Number of blocks in the set.
    pub fn len(&self) -> u64 {
        self.blocks
    }

    pub fn is_empty(&self) -> bool {
        self.blocks == 0
    }

    /// Number of ranges (extents) the set holds.
    pub fn extents(&self) -> usize {
        self.ranges.len()
    }

    pub fn ranges(&self) -> impl Iterator<Item = BlockRange> + '_ {
        self.ranges
            .iter()
            .map(|(&start, &end)| BlockRange { start, end })
    }

    /// Returns the set and leaves an empty one in its place.
    pub fn take(&mut self) -> BlockSet {
        std::mem::take(self)
    }
}

impl FromIterator<BlockRange> for BlockSet {
    fn from_iter<I: IntoIterator<Item = BlockRange>>(iter: I) -> Self {
        let mut set = BlockSet::new();
        for r in iter {
            set.insert(r.start, r.end);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(set: &BlockSet) -> Vec<(u64, u64)> {
        set.ranges().map(|r| (r.start, r.end)).collect()
    }

    #[test]
    fn merges_overlapping_and_adjacent_ranges() {
        let mut s = BlockSet::new();
        s.insert(10, 20);
        s.insert(30, 40);
        assert_eq!(ranges(&s), [(10, 20), (30, 40)]);
        s.insert(20, 30); // touches both
        assert_eq!(ranges(&s), [(10, 40)]);
        assert_eq!(s.len(), 30);
        s.insert(5, 12);
        s.insert(39, 45);
        assert_eq!(ranges(&s), [(5, 45)]);
        assert_eq!(s.len(), 40);
    }

    #[test]
    fn inserting_known_blocks_changes_nothing() {
        let mut s = BlockSet::new();
        s.insert(0, 100);
        let before = s.clone();
        s.insert(10, 20);
        s.insert(0, 100);
        s.insert(50, 50);
        assert_eq!(s, before);
    }

    #[test]
    fn swallows_many_ranges() {
        let mut s = BlockSet::new();
        for i in 0..10 {
            s.insert(i * 10, i * 10 + 2);
        }
        assert_eq!(s.extents(), 10);
        s.insert(1, 95);
        assert_eq!(ranges(&s), [(0, 95)]);
        assert_eq!(s.len(), 95);
    }

    #[test]
    fn byte_ranges_round_out_to_blocks() {
        let mut s = BlockSet::new();
        s.insert_bytes(4095, 2, 4096);
        assert_eq!(ranges(&s), [(0, 2)]);
        s.insert_bytes(8192 * 4, 0, 4096);
        assert_eq!(s.len(), 2);
        assert!(s.contains(1) && !s.contains(2));
    }

    #[test]
    fn take_resets() {
        let mut s = BlockSet::new();
        s.insert(3, 4);
        let t = s.take();
        assert!(s.is_empty());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn matches_a_naive_model() {
        // Deterministic pseudo-random inserts checked against a bitmap.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut s = BlockSet::new();
        let mut bits = vec![false; 2000];
        for _ in 0..500 {
            let a = next() % 2000;
            let len = next() % 40;
            let b = (a + len).min(2000);
            s.insert(a, b);
            bits[a as usize..b as usize]
                .iter_mut()
                .for_each(|x| *x = true);
        }
        for (i, &bit) in bits.iter().enumerate() {
            assert_eq!(s.contains(i as u64), bit, "block {i}");
        }
        assert_eq!(s.len(), bits.iter().filter(|&&b| b).count() as u64);
        let r = ranges(&s);
        assert!(
            r.windows(2).all(|w| w[0].1 < w[1].0),
            "disjoint, not adjacent"
        );
    }
}
