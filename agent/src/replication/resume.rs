//! Resuming an interrupted full copy (the initial sync, or a resync).
//!
//! A full copy ships every allocated byte of every volume, volume after volume, each in
//! ascending offsets. The DR site keeps, per volume, the offset below which the data of the copy
//! is durably in its replica (the [`Frontier`]; fsynced, then recorded as a [`Checkpoint`] in
//! the cycle's progress). When the same cycle of the same point arrives again, it answers those
//! offsets in `Resume`, and the sender skips what lies below them ([`skip_below`]).
//!
//! The point's identity matters: the replicas hold data of one point in time, so the active
//! site keeps that point's clones across its own restarts ([`PendingPoint`]) and sends the same
//! identity; a new point (the clones were lost) is a new copy from offset 0.
//!
//! Incremental cycles never resume: the DR site restores its replicas from the last snapshot and
//! the delta is shipped again.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{
    cycle::Piece,
    extents::{Change, ChangeKind},
};

/// The point of a full copy under way at the active site, kept in its store
/// (`source_cycle.pending`) so that a restarted agent ships the same clones again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPoint {
    pub cycle: u64,
    /// The point's identity, sent in `Begin::point`.
    pub point: u64,
    /// One clone per volume, in the order of the volumes.
    pub clones: Vec<PathBuf>,
    /// When the point was taken (seconds since the Unix epoch).
    #[serde(default)]
    pub taken_unix: u64,
}

/// What the DR site records of a full copy under way (the cycle's progress in its store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub point: u64,
    /// Per volume: the data below this offset is durably in the replica.
    pub offsets: Vec<u64>,
}

/// A new point identity: random, below 2^53 so that any JSON reader keeps it exact.
pub fn new_point_id() -> u64 {
    let mut bytes = [0u8; 8];
    // SystemRandom only fails without a kernel random source; the time is then unique enough.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = now.to_be_bytes();
    }
    (u64::from_be_bytes(bytes) & ((1 << 53) - 1)).max(1)
}

/// Why resume offsets are not used; the copy starts over from 0.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadResume {
    #[error("{got} offsets for {expected} volumes")]
    Count { got: usize, expected: usize },
    #[error("volume #{volume}: offset {offset} is beyond its {size} bytes")]
    Beyond {
        volume: usize,
        offset: u64,
        size: u64,
    },
    #[error("offsets {offsets:?} for a delta (only a full copy resumes)")]
    NotFull { offsets: Vec<u64> },
}

/// Checks resume offsets against the volumes' sizes: one per volume, none beyond its volume,
/// and all zero unless the cycle is a full copy.
pub fn check_offsets(offsets: &[u64], sizes: &[u64], full: bool) -> Result<(), BadResume> {
    if offsets.len() != sizes.len() {
        return Err(BadResume::Count {
            got: offsets.len(),
            expected: sizes.len(),
        });
    }
    for (volume, (&offset, &size)) in offsets.iter().zip(sizes).enumerate() {
        if offset > size {
            return Err(BadResume::Beyond {
                volume,
                offset,
                size,
            });
        }
    }
    if !full && offsets.iter().any(|&o| o > 0) {
        return Err(BadResume::NotFull {
            offsets: offsets.to_vec(),
        });
    }
    Ok(())
}

/// The changes of `delta` at or above each volume's offset (a change across it is cut there).
pub fn skip_below(delta: &[Vec<Change>], offsets: &[u64]) -> Vec<Vec<Change>> {
    delta
        .iter()
        .enumerate()
        .map(|(v, changes)| {
            let from = offsets.get(v).copied().unwrap_or(0);
            changes
                .iter()
                .filter(|c| c.end() > from)
                .map(|c| {
                    let start = c.offset.max(from);
                    Change {
                        offset: start,
                        len: c.end() - start,
                        kind: c.kind,
                    }
                })
                .collect()
        })
        .collect()
}

/// Data bytes of `delta` below each volume's offset: what a resumed copy does not ship again.
pub fn data_below(delta: &[Vec<Change>], offsets: &[u64]) -> u64 {
    delta
        .iter()
        .enumerate()
        .map(|(v, changes)| {
            let until = offsets.get(v).copied().unwrap_or(0);
            changes
                .iter()
                .filter(|c| c.kind == ChangeKind::Data)
                .map(|c| c.end().min(until).saturating_sub(c.offset))
                .sum::<u64>()
        })
        .sum()
}

/// Why a full copy's piece is refused by the [`Frontier`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutOfOrder {
    #[error(
        "piece for volume #{volume} after volume #{current}: a full copy goes volume by volume"
    )]
    Volume { volume: usize, current: usize },
    #[error(
        "volume #{volume}: piece at {offset} below the previous piece's end {end}: a full copy goes in ascending offsets"
    )]
    Offset {
        volume: usize,
        offset: u64,
        end: u64,
    },
}

/// The DR site's view of how far a full copy got, per volume (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontier {
    sizes: Vec<u64>,
    offsets: Vec<u64>,
    /// The volume receiving pieces, and where its last piece ended (in this attempt).
    current: usize,
    last_end: u64,
}

impl Frontier {
    /// Starts at `offsets` (checked with [`check_offsets`] by the caller).
    pub fn new(sizes: Vec<u64>, offsets: Vec<u64>) -> Frontier {
        Frontier {
            sizes,
            offsets,
            current: 0,
            last_end: 0,
        }
    }

    /// Takes a piece into account before it is written; refuses one out of order.
    pub fn advance(&mut self, piece: &Piece) -> Result<(), OutOfOrder> {
        let (volume, offset, len) = piece.span();
        if volume < self.current {
            return Err(OutOfOrder::Volume {
                volume,
                current: self.current,
            });
        }
        if volume > self.current {
            // The sender finished the volumes before this one.
            for v in self.current..volume.min(self.sizes.len()) {
                self.offsets[v] = self.sizes[v];
            }
            self.current = volume;
            self.last_end = 0;
        }
        if offset < self.last_end {
            return Err(OutOfOrder::Offset {
                volume,
                offset,
                end: self.last_end,
            });
        }
        self.last_end = offset.saturating_add(len);
        if let Some(o) = self.offsets.get_mut(volume) {
            *o = (*o).max(self.last_end);
        }
        Ok(())
    }

    /// A volume's digest matched: all of it arrived.
    pub fn volume_done(&mut self, volume: usize) {
        if let (Some(o), Some(size)) = (self.offsets.get_mut(volume), self.sizes.get(volume)) {
            *o = *size;
        }
    }

    /// Per volume, the offset reached (valid as a resume point once the replicas are fsynced).
    pub fn offsets(&self) -> &[u64] {
        &self.offsets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(offset: u64, len: u64) -> Change {
        Change {
            offset,
            len,
            kind: ChangeKind::Data,
        }
    }

    #[test]
    fn skipping_cuts_the_change_across_the_offset_and_counts_what_it_left_out() {
        let delta = vec![vec![data(0, 8192), data(16384, 8192)], vec![data(0, 4096)]];
        let rest = skip_below(&delta, &[12288, 0]);
        assert_eq!(rest, vec![vec![data(16384, 8192)], vec![data(0, 4096)]]);
        let rest = skip_below(&delta, &[20480, 4096]);
        assert_eq!(rest, vec![vec![data(20480, 4096)], vec![]]);
        assert_eq!(data_below(&delta, &[20480, 4096]), 8192 + 4096 + 4096);
        assert_eq!(data_below(&delta, &[0, 0]), 0);
    }

    #[test]
    fn offsets_beyond_a_volume_in_a_delta_or_miscounted_are_refused() {
        assert_eq!(check_offsets(&[4096, 0], &[8192, 8192], true), Ok(()));
        assert_eq!(
            check_offsets(&[9000, 0], &[8192, 8192], true),
            Err(BadResume::Beyond {
                volume: 0,
                offset: 9000,
                size: 8192
            })
        );
        assert!(matches!(
            check_offsets(&[0], &[8192, 8192], true),
            Err(BadResume::Count {
                got: 1,
                expected: 2
            })
        ));
        assert!(matches!(
            check_offsets(&[4096, 0], &[8192, 8192], false),
            Err(BadResume::NotFull { .. })
        ));
    }

    #[test]
    fn the_frontier_follows_ascending_pieces_and_refuses_any_other_order() {
        let piece = |volume, offset, len: usize| Piece::Data {
            volume,
            offset,
            data: vec![1; len],
        };
        let mut f = Frontier::new(vec![1 << 20, 1 << 20], vec![0, 0]);
        f.advance(&piece(0, 0, 4096)).unwrap();
        f.advance(&piece(0, 8192, 4096)).unwrap();
        assert_eq!(f.offsets(), &[12288, 0]);
        assert_eq!(
            f.advance(&piece(0, 4096, 4096)),
            Err(OutOfOrder::Offset {
                volume: 0,
                offset: 4096,
                end: 12288
            })
        );
        f.advance(&piece(1, 0, 4096)).unwrap();
        assert_eq!(f.offsets(), &[1 << 20, 4096]);
        assert!(matches!(
            f.advance(&piece(0, 1 << 19, 4096)),
            Err(OutOfOrder::Volume { .. })
        ));
        // Resumed: the recorded offset stays until the pieces pass it.
        let mut f = Frontier::new(vec![1 << 20], vec![65536]);
        f.advance(&piece(0, 0, 4096)).unwrap();
        assert_eq!(f.offsets(), &[65536]);
        f.volume_done(0);
        assert_eq!(f.offsets(), &[1 << 20]);
    }
}
