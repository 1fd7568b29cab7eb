//! The tracker-gap check: every 4 KiB block a cycle's FIEMAP comparison found changed (the
//! source of truth: those blocks are shipped whatever this says) must also have been seen by
//! the eBPF block tracker over the same interval. A block FIEMAP found but the tracker did not
//! is a gap: a write path the tracker does not see (written to the image directly, not through
//! its loop device), or a tracker bug. Blocks the tracker saw that did not change are normal
//! (rewrites of the same data, discards of unmapped space, writes after the point) and counted.
//!
//! The check is only meaningful when the tracker watched the volume the whole interval; the
//! tracker's window says when it did not ([`crate::tracking::Tracker::window`]), and the result
//! is then [`GapResult::NotChecked`] with the reason.
use serde::{Deserialize, Serialize};

use super::extents::Change;
use crate::tracking::{BlockRange, BlockSet};

/// Block size of the comparison (the tracker's and the cycle's).
pub const BLOCK: u64 = 4096;
/// How many missing ranges a gap lists.
pub const FIRST_RANGES: usize = 8;

/// A byte range of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

/// The check of one volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum GapResult {
    /// Every changed block was tracked.
    Ok {
        changed_blocks: u64,
        /// Tracked blocks that did not change.
        extra_blocks: u64,
    },
    /// Blocks changed that the tracker did not see.
    Gap {
        changed_blocks: u64,
        missing_blocks: u64,
        /// The first [`FIRST_RANGES`] missing ranges, in bytes.
        first_missing: Vec<ByteRange>,
        extra_blocks: u64,
    },
    NotChecked {
        reason: String,
    },
}

/// One volume's check, named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeGap {
    pub volume: String,
    pub check: GapResult,
}

impl VolumeGap {
    pub fn is_gap(&self) -> bool {
        matches!(self.check, GapResult::Gap { .. })
    }
}

/// The blocks a delta touches (data and zeroed ranges alike: a discard is a change too).
pub fn changed_blocks(changes: &[Change]) -> BlockSet {
    let mut set = BlockSet::new();
    for c in changes {
        set.insert_bytes(c.offset, c.len, BLOCK);
    }
    set
}

/// Blocks of `a` not in `b` (both sorted, disjoint ranges).
fn difference(a: &BlockSet, b: &BlockSet) -> BlockSet {
    let theirs: Vec<BlockRange> = b.ranges().collect();
    let mut out = BlockSet::new();
    let mut j = 0;
    for r in a.ranges() {
        let mut at = r.start;
        while j < theirs.len() && theirs[j].end <= at {
            j += 1;
        }
        let mut k = j;
        while at < r.end {
            match theirs.get(k) {
                Some(t) if t.start < r.end => {
                    if t.start > at {
                        out.insert(at, t.start);
                    }
                    at = at.max(t.end);
                    k += 1;
                }
                _ => {
                    out.insert(at, r.end);
                    at = r.end;
                }
            }
        }
    }
    out
}

/// Compares what FIEMAP found changed with what the tracker saw.
pub fn check(changed: &BlockSet, tracked: &BlockSet) -> GapResult {
    let missing = difference(changed, tracked);
    let extra_blocks = difference(tracked, changed).len();
    if missing.is_empty() {
        return GapResult::Ok {
            changed_blocks: changed.len(),
            extra_blocks,
        };
    }
    GapResult::Gap {
        changed_blocks: changed.len(),
        missing_blocks: missing.len(),
        first_missing: missing
            .ranges()
            .take(FIRST_RANGES)
            .map(|r| ByteRange {
                offset: r.start * BLOCK,
                len: (r.end - r.start) * BLOCK,
            })
            .collect(),
        extra_blocks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::extents::ChangeKind;

    fn set(ranges: &[(u64, u64)]) -> BlockSet {
        ranges
            .iter()
            .map(|&(start, end)| BlockRange { start, end })
            .collect()
    }

    #[test]
    fn difference_matches_a_naive_model() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..50 {
            let (mut a, mut b) = (BlockSet::new(), BlockSet::new());
            for _ in 0..30 {
                let s = next() % 500;
                a.insert(s, s + next() % 20);
                let s = next() % 500;
                b.insert(s, s + next() % 20);
            }
            let d = difference(&a, &b);
            for i in 0..600 {
                assert_eq!(d.contains(i), a.contains(i) && !b.contains(i), "block {i}");
            }
        }
    }

    #[test]
    fn a_tracked_superset_is_ok_and_counts_the_extra() {
        let changed = changed_blocks(&[
            Change {
                offset: 0,
                len: 8192,
                kind: ChangeKind::Data,
            },
            Change {
                offset: 40960,
                len: 4096,
                kind: ChangeKind::Zero,
            },
        ]);
        let tracked = set(&[(0, 4), (10, 11), (50, 52)]);
        assert_eq!(
            check(&changed, &tracked),
            GapResult::Ok {
                changed_blocks: 3,
                extra_blocks: 4
            }
        );
    }

    #[test]
    fn a_block_the_tracker_missed_is_a_gap_with_its_range() {
        let changed = set(&[(0, 4), (100, 101), (200, 210)]);
        let tracked = set(&[(0, 4), (200, 205)]);
        assert_eq!(
            check(&changed, &tracked),
            GapResult::Gap {
                changed_blocks: 15,
                missing_blocks: 6,
                first_missing: vec![
                    ByteRange {
                        offset: 100 * 4096,
                        len: 4096
                    },
                    ByteRange {
                        offset: 205 * 4096,
                        len: 5 * 4096
                    },
                ],
                extra_blocks: 0,
            }
        );
    }
}
