//! The extent diff: which byte ranges of a volume changed between two point-in-time clones of its
//! image, from their FIEMAP extents alone.
//!
//! While the previous clone exists it holds a reference on every physical block it maps, so the
//! file system can neither overwrite those blocks in place nor hand them out again: a write to
//! the image after that clone lands in newly allocated blocks (copy on write). A range that the
//! new clone maps to the same physical place as the previous one therefore holds the same bytes;
//! anything else may have changed. The comparison is exact at the file system's block size
//! (`FIEMAP_EXTENT_SHARED` alone would miss newly allocated blocks). Hence: keep the previous
//! clone, unmodified, until the next one is taken and compared; compare clones, never the live
//! image. Anything that moves extents without changing data (defragmentation) only costs extra
//! `Data`, never a missed change.
//!
//! # Semantics of [`changed`]
//! Each byte of `[0, size)` is classified by what `prev` and `next` map it to:
//!
//! | `next` maps it to \ `prev` maps it to | hole, unwritten | written, same place | else |
//! |---|---|---|---|
//! | hole or unwritten (reads zeros) | unchanged | `Zero` | `Zero` |
//! | written | `Data` | unchanged | `Data` |
//! | opaque | `Data` | `Data` | `Data` |
//!
//! "Opaque" extents (`UNKNOWN`, `DELALLOC`, `ENCODED`, `DATA_ENCRYPTED`, `NOT_ALIGNED`,
//! `DATA_INLINE`, `DATA_TAIL`) have no meaningful physical address and are always `Data` in
//! `next`. An `UNWRITTEN` extent reads as zeros: it is unchanged against an unwritten extent or a
//! hole in `prev` (so also against "the same unwritten extent"), and `Zero` against written data;
//! an unwritten extent in `prev` turned written at the same place is `Data`. Extents overlapping
//! each other within one list (which FIEMAP never reports) count as opaque.
//!
//! The result is sorted, merged (no two adjacent ranges of the same kind) and non-overlapping,
//! with every range aligned out to `block` (the end of the file counts as aligned). Copying a
//! whole block from the new clone is always correct; punching it only if all of it reads as zeros
//! in the new clone. So a `Zero` range grows to the block edges when the rest of those blocks
//! reads as zeros too (a hole or unwritten in `next`), and otherwise its partial blocks become
//! `Data`. Applying the result to a copy of the previous clone (`Data`: copy those bytes from the
//! new clone; `Zero`: punch) yields the new clone. `size` is the new clone's size; extents beyond
//! it are ignored, and resizing the replica is the caller's job.
use serde::{Deserialize, Serialize};

use super::fsops::{Extent, flags};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Copy these bytes from the new clone.
    Data,
    /// These bytes read as zeros now: punch them.
    Zero,
}

/// A changed byte range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Change {
    pub offset: u64,
    pub len: u64,
    pub kind: ChangeKind,
}

impl Change {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// What a piece of a file maps to in one extent list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Map {
    Hole,
    /// Written data at this physical address (of the piece's first byte).
    Written(u64),
    Unwritten(u64),
    Opaque,
}

impl Map {
    fn reads_zeros(self) -> bool {
        matches!(self, Map::Hole | Map::Unwritten(_))
    }
}

/// A piece of a file `[start, end)` and what it maps to; pieces of one list never overlap.
#[derive(Clone, Copy, Debug)]
struct Piece {
    start: u64,
    end: u64,
    map: Map,
}

impl Piece {
    fn map_at(&self, at: u64) -> Map {
        match self.map {
            Map::Written(p) => Map::Written(p.wrapping_add(at - self.start)),
            Map::Unwritten(p) => Map::Unwritten(p.wrapping_add(at - self.start)),
            m => m,
        }
    }
}

fn classify(e: &Extent) -> Map {
    if e.flags & flags::OPAQUE != 0 {
        Map::Opaque
    } else if e.flags & flags::UNWRITTEN != 0 {
        Map::Unwritten(e.physical)
    } else {
        Map::Written(e.physical)
    }
}

/// The mapped pieces of `[0, size)` by `extents` (any order), sorted; overlaps become opaque.
fn pieces(extents: &[Extent], size: u64) -> Vec<Piece> {
    let mut sorted: Vec<&Extent> = extents
        .iter()
        .filter(|e| e.length > 0 && e.logical < size)
        .collect();
    sorted.sort_by_key(|e| e.logical);
    let mut cuts: Vec<u64> = sorted
        .iter()
        .flat_map(|e| [e.logical, e.end().min(size)])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::with_capacity(sorted.len());
    let mut active: Vec<&Extent> = Vec::new();
    let mut next = 0;
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        active.retain(|e| e.end() > a);
        while next < sorted.len() && sorted[next].logical <= a {
            active.push(sorted[next]);
            next += 1;
        }
        let map = match active.as_slice() {
            [] => continue,
            [e] => Piece {
                start: e.logical,
                end: e.end(),
                map: classify(e),
            }
            .map_at(a),
            _ => Map::Opaque,
        };
        out.push(Piece {
            start: a,
            end: b,
            map,
        });
    }
    out
}

/// The cursor's piece covering `at`, if any (pieces sorted, `at` never decreasing).
fn map_at(pieces: &[Piece], cursor: &mut usize, at: u64) -> Map {
    while *cursor < pieces.len() && pieces[*cursor].end <= at {
        *cursor += 1;
    }
    match pieces.get(*cursor) {
        Some(p) if p.start <= at => p.map_at(at),
        _ => Map::Hole,
    }
}

/// The ranges that differ between the clone mapped by `prev` and the one mapped by `next` (of
/// `size` bytes), aligned out to `block` bytes (0 counts as 1). See the module documentation.
pub fn changed(prev: &[Extent], next: &[Extent], size: u64, block: u64) -> Vec<Change> {
    let (prev, next) = (pieces(prev, size), pieces(next, size));
    let mut cuts: Vec<u64> = prev
        .iter()
        .chain(&next)
        .flat_map(|p| [p.start, p.end])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let (mut i, mut j) = (0, 0);
    let mut raw: Vec<(u64, u64, ChangeKind)> = Vec::new();
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (p, n) = (map_at(&prev, &mut i, a), map_at(&next, &mut j, a));
        let kind = match n {
            Map::Opaque => Some(ChangeKind::Data),
            Map::Hole | Map::Unwritten(_) => (!p.reads_zeros()).then_some(ChangeKind::Zero),
            Map::Written(_) => (p != n).then_some(ChangeKind::Data),
        };
        let Some(kind) = kind else { continue };
        match raw.last_mut() {
            Some(last) if last.1 == a && last.2 == kind => last.1 = b,
            _ => raw.push((a, b, kind)),
        }
    }
    // Where the new clone reads zeros: the gaps between its written (or opaque) pieces.
    let mut zeros = Vec::new();
    let mut at = 0;
    for p in next.iter().filter(|p| !p.map.reads_zeros()) {
        if at < p.start {
            zeros.push((at, p.start));
        }
        at = p.end;
    }
    if at < size {
        zeros.push((at, size));
    }
    align(&raw, &zeros, size, block)
}

/// Everything in `ranges` (offset, len: the allocated ranges of a file of `size` bytes, from
/// SEEK_DATA/SEEK_HOLE) as `Data`, aligned out to `block`: the initial full sync into a new
/// sparse replica. From FIEMAP extents, `changed(&[], extents, size, block)` gives the same and
/// also skips unwritten extents.
pub fn all_data(ranges: &[(u64, u64)], size: u64, block: u64) -> Vec<Change> {
    let raw: Vec<(u64, u64, ChangeKind)> = ranges
        .iter()
        .filter(|&&(offset, len)| len > 0 && offset < size)
        .map(|&(offset, len)| {
            (
                offset,
                offset.saturating_add(len).min(size),
                ChangeKind::Data,
            )
        })
        .collect();
    align(&raw, &[], size, block)
}

/// Bytes to copy and bytes to punch: `(data, zero)`.
pub fn total(changes: &[Change]) -> (u64, u64) {
    changes.iter().fold((0, 0), |(d, z), c| match c.kind {
        ChangeKind::Data => (d + c.len, z),
        ChangeKind::Zero => (d, z + c.len),
    })
}

/// Aligns `raw` ranges (within `[0, size)`) to `block`: `Data` out; `Zero` out as far as the
/// blocks read as zeros in the new clone (`zeros`: sorted ranges, each `Zero` range inside one),
/// its partial blocks becoming `Data` otherwise. Sorted, merged, `Zero` never overlapping `Data`.
fn align(
    raw: &[(u64, u64, ChangeKind)],
    zeros: &[(u64, u64)],
    size: u64,
    block: u64,
) -> Vec<Change> {
    let block = block.max(1);
    let down = |x: u64| x - x % block;
    let up = |x: u64| {
        if x.is_multiple_of(block) {
            x.min(size)
        } else {
            down(x).saturating_add(block).min(size)
        }
    };
    let (mut data, mut zero) = (Vec::new(), Vec::new());
    for &(a, b, kind) in raw {
        let (a, b) = (a.min(size), b.min(size));
        if a >= b {
            continue;
        }
        if kind == ChangeKind::Data {
            data.push((down(a), up(b)));
            continue;
        }
        // The range of zeros around [a, b) (or [a, b) itself).
        let z = zeros.partition_point(|z| z.1 <= a);
        let (za, zb) = match zeros.get(z) {
            Some(&(za, zb)) if za <= a && b <= zb => (za, zb),
            _ => (a, b),
        };
        let inner_a = if down(a) >= za { down(a) } else { up(a) };
        let inner_b = if up(b) <= zb { up(b) } else { down(b) };
        if inner_a < inner_b {
            zero.push((inner_a, inner_b));
            data.push((down(a), inner_a));
            data.push((inner_b, up(b)));
        } else {
            data.push((down(a), up(b)));
        }
    }
    let data = union(data);
    let zero = subtract(union(zero), &data);
    let mut out: Vec<Change> = data
        .into_iter()
        .map(|(a, b)| (a, b, ChangeKind::Data))
        .chain(zero.into_iter().map(|(a, b)| (a, b, ChangeKind::Zero)))
        .map(|(offset, end, kind)| Change {
            offset,
            len: end - offset,
            kind,
        })
        .collect();
    out.sort_by_key(|c| c.offset);
    out
}

/// Sorted, merged (overlapping or touching) non-empty ranges.
fn union(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|r| r.0 < r.1);
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// `ranges` minus `holes` (both sorted and merged).
fn subtract(ranges: Vec<(u64, u64)>, holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(ranges.len());
    let mut h = 0;
    for (mut a, b) in ranges {
        while h < holes.len() && holes[h].1 <= a {
            h += 1;
        }
        let mut k = h;
        while a < b {
            match holes.get(k) {
                Some(&(ha, hb)) if ha < b => {
                    if a < ha {
                        out.push((a, ha));
                    }
                    a = a.max(hb);
                    k += 1;
                }
                _ => {
                    out.push((a, b));
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
