//! The synchronous core of a replication cycle, on both sides, through the `Images` seam:
//!
//! - active site: [`take_point`] (pre-flush, group freeze, clone every image, thaw), then
//!   [`delta`] (what changed since the previous point) and [`Pieces`] (the changed bytes, read
//!   from the new clones in bounded chunks);
//! - DR site: [`Applier`] writes pieces into the working replicas, checks bounds and digests,
//!   fsyncs, and turns them into a group-consistent snapshot (a reflink of each replica).
//!
//! The network (wire frames, compression, bandwidth) sits around this core, so the whole cycle is
//! unit-tested against `FakeImages` without sockets or root.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    extents::{self, Change, ChangeKind},
    fsops::{Extent, FsError, Images},
    wire::VolumeDigest,
};

/// Blocks are compared and shipped at this granularity.
pub const BLOCK: u64 = 4096;
/// Largest piece of data read or sent at once.
pub const PIECE: u64 = 1 << 20;
/// How far ahead of the piece being read the clones' data is prefetched.
const READ_AHEAD: u64 = 16 << 20;
/// Bytes written into a replica between two starts of its writeback.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// One volume of a VFS at the active site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceVolume {
    pub name: String,
    /// The image file (loop backing file).
    pub image: PathBuf,
    /// Where its file system is mounted (frozen during the clone).
    pub mount: PathBuf,
}

/// A group-consistent point in time: one clone per volume, same order as the volumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    pub cycle: u64,
    pub clones: Vec<PathBuf>,
    /// How long writes were blocked (freeze, clones, thaw).
    pub freeze_window: Duration,
    /// Inside the window: the FIFREEZE calls of all the volumes, then their FICLONEs.
    #[serde(default)]
    pub window_parts: WindowParts,
}

/// Where a point's time went: the clones taken before the freeze, then inside the window the
/// FIFREEZE calls and the catching up of the clones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowParts {
    #[serde(default)]
    pub preclone: Duration,
    pub freeze: Duration,
    pub clone: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("volume {volume}: {what}")]
    Volume { volume: String, what: String },
    #[error("cycle {cycle}: {what}")]
    Protocol { cycle: u64, what: String },
}

/// Where the clones of `cycle` live: `<dir>/<cycle>/<volume>.img`.
pub fn clone_path(dir: &Path, cycle: u64, volume: &str) -> PathBuf {
    dir.join(cycle.to_string()).join(format!("{volume}.img"))
}

/// Takes a group-consistent point in time of `volumes`, keeping the write freeze short:
///
/// 1. pre-flush every volume, then clone each image while the volumes are live (FICLONE costs
///    ~12 µs per extent of an image, and images fragment to thousands of extents);
/// 2. pre-flush again, freeze them all together, and in each clone redo only the ranges whose
///    extents differ from the image's now ([`catch_up`]);
/// 3. thaw, then fsync the clones.
///
/// On any error the file systems are thawed and the clones made so far removed.
pub fn take_point(
    images: &mut dyn Images,
    volumes: &[SourceVolume],
    cycle: u64,
    dir: &Path,
) -> Result<Point, CycleError> {
    let dsts: Vec<PathBuf> = volumes
        .iter()
        .map(|v| clone_path(dir, cycle, &v.name))
        .collect();
    let mut clones = Vec::new();
    let result = point_into(images, volumes, &dsts, &mut clones);
    match result {
        Ok((freeze_window, window_parts)) => Ok(Point {
            cycle,
            clones,
            freeze_window,
            window_parts,
        }),
        Err(e) => {
            for c in &clones {
                let _ = images.remove(c);
            }
            Err(e)
        }
    }
}

/// [`take_point`]'s steps; `clones` collects the clones made (for the caller to remove on error).
fn point_into(
    images: &mut dyn Images,
    volumes: &[SourceVolume],
    dsts: &[PathBuf],
    clones: &mut Vec<PathBuf>,
) -> Result<(Duration, WindowParts), CycleError> {
    for v in volumes {
        images.flush(&v.mount, &v.image)?;
    }
    let pre = Instant::now();
    let pairs: Vec<(&Path, &Path)> = volumes
        .iter()
        .zip(dsts)
        .map(|(v, d)| (v.image.as_path(), d.as_path()))
        .collect();
    let mut made = Ok(());
    for (result, dst) in images.clone_all_unsynced(&pairs).into_iter().zip(dsts) {
        match result {
            Ok(()) => clones.push(dst.clone()),
            Err(e) => made = made.and(Err(e)),
        }
    }
    made?;
    let before = clones
        .iter()
        .map(|c| images.extents(c))
        .collect::<Result<Vec<_>, _>>()?;
    let preclone = pre.elapsed();
    for v in volumes {
        images.flush(&v.mount, &v.image)?;
    }
    let mounts: Vec<PathBuf> = volumes.iter().map(|v| v.mount.clone()).collect();
    let start = Instant::now();
    let freeze_calls = images.freeze_all(&mounts)?;
    let frozen = start.elapsed();
    let caught = volumes
        .iter()
        .zip(clones.iter())
        .zip(&before)
        .try_for_each(|((v, clone), before)| catch_up(images, &v.image, clone, before));
    let caught_up = start.elapsed();
    let thawed = images.thaw_all(&mounts);
    let freeze_window = start.elapsed();
    caught?;
    thawed?;
    for c in clones.iter() {
        images.fsync(c)?;
    }
    Ok((
        freeze_window,
        WindowParts {
            preclone,
            freeze: freeze_calls,
            clone: caught_up.saturating_sub(frozen),
        },
    ))
}

/// Makes `clone`, taken from `image` earlier (its extents then: `before`), read what `image`
/// reads now: the ranges where their extents differ are cloned again (FICLONERANGE) or punched.
/// Exact because the clone shares every block with the image: a write to the image since then
/// moved the blocks it wrote (copy on write) or filled a hole, and a punch left a hole, so the
/// extent comparison ([`extents::changed`], the same as the cycle's delta) finds all of it.
pub fn catch_up(
    images: &mut dyn Images,
    image: &Path,
    clone: &Path,
    before: &[Extent],
) -> Result<(), CycleError> {
    let size = images.size(image)?;
    let was = images.size(clone)?;
    if was != size {
        return Err(CycleError::Volume {
            volume: image.display().to_string(),
            what: format!("the image changed size from {was} to {size} bytes during the cycle"),
        });
    }
    // FIEMAP_FLAG_SYNC: what the freeze flushed into the image is allocated first.
    let now = images.extents(image)?;
    for c in extents::changed(before, &now, size, BLOCK) {
        match c.kind {
            ChangeKind::Data => images.clone_range(image, clone, c.offset, c.len)?,
            ChangeKind::Zero => images.punch(clone, c.offset, c.len)?,
        }
    }
    Ok(())
}

/// Removes the clones of a point (after the DR site acknowledged the next one).
pub fn drop_point(images: &mut dyn Images, point: &Point) -> Result<(), CycleError> {
    for c in &point.clones {
        images.remove(c)?;
    }
    Ok(())
}

/// Per volume, the byte ranges that differ between `prev` and `next` (everything allocated
/// when there is no previous point: the initial sync).
pub fn delta(
    images: &mut dyn Images,
    prev: Option<&Point>,
    next: &Point,
) -> Result<Vec<Vec<Change>>, CycleError> {
    let mut out = Vec::new();
    for (i, clone) in next.clones.iter().enumerate() {
        let size = images.size(clone)?;
        let changes = match prev.and_then(|p| p.clones.get(i)) {
            Some(prev_clone) => {
                let before = images.extents(prev_clone)?;
                let after = images.extents(clone)?;
                extents::changed(&before, &after, size, BLOCK)
            }
            None => extents::all_data(&images.data_ranges(clone)?, size, BLOCK),
        };
        out.push(changes);
    }
    Ok(out)
}

/// A unit of shipped change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Data {
        volume: usize,
        offset: u64,
        data: Vec<u8>,
    },
    Zero {
        volume: usize,
        offset: u64,
        len: u64,
    },
}

impl Piece {
    /// The volume index, offset and length in bytes the piece covers.
    pub fn span(&self) -> (usize, u64, u64) {
        match self {
            Piece::Data {
                volume,
                offset,
                data,
            } => (*volume, *offset, data.len() as u64),
            Piece::Zero {
                volume,
                offset,
                len,
            } => (*volume, *offset, *len),
        }
    }
}

/// The pieces of a delta, data read from the clones of `point`, at most [`PIECE`] bytes each.
pub struct Pieces<'a> {
    images: &'a mut dyn Images,
    point: &'a Point,
    delta: std::borrow::Cow<'a, [Vec<Change>]>,
    volume: usize,
    change: usize,
    offset: u64,
    /// The prefetch cursor (volume, change, offset), ahead of the reading one.
    ahead: (usize, usize, u64),
    /// Bytes prefetched and not read yet.
    ahead_bytes: u64,
}

impl<'a> Pieces<'a> {
    /// `delta` borrowed, or owned (a delta cut for a resumed copy).
    pub fn new(
        images: &'a mut dyn Images,
        point: &'a Point,
        delta: impl Into<std::borrow::Cow<'a, [Vec<Change>]>>,
    ) -> Self {
        Pieces {
            images,
            point,
            delta: delta.into(),
            volume: 0,
            change: 0,
            offset: 0,
            ahead: (0, 0, 0),
            ahead_bytes: 0,
        }
    }

    /// Asks for the data of the next changes, up to [`READ_AHEAD`] bytes beyond what was read,
    /// so the disk reads them while earlier pieces are compressed and sent. A hint: its
    /// failure changes nothing (the read that follows reports any real error).
    fn prefetch(&mut self) {
        while self.ahead_bytes < READ_AHEAD {
            let (volume, change, offset) = self.ahead;
            let Some(changes) = self.delta.get(volume) else {
                return;
            };
            let Some(c) = changes.get(change) else {
                self.ahead = (volume + 1, 0, 0);
                continue;
            };
            let start = c.offset.max(offset);
            if c.kind == ChangeKind::Zero || start >= c.end() {
                self.ahead = (volume, change + 1, offset);
                continue;
            }
            let len = (c.end() - start).min(READ_AHEAD);
            let _ = self.images.prefetch(&self.point.clones[volume], start, len);
            self.ahead = (volume, change, start + len);
            self.ahead_bytes += len;
        }
    }
}

impl Iterator for Pieces<'_> {
    type Item = Result<Piece, CycleError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let changes = self.delta.get(self.volume)?;
            let Some(c) = changes.get(self.change) else {
                self.volume += 1;
                self.change = 0;
                self.offset = 0;
                continue;
            };
            let start = c.offset.max(self.offset);
            if start >= c.end() {
                self.change += 1;
                continue;
            }
            if c.kind == ChangeKind::Zero {
                self.change += 1;
                return Some(Ok(Piece::Zero {
                    volume: self.volume,
                    offset: c.offset,
                    len: c.len,
                }));
            }
            let len = (c.end() - start).min(PIECE);
            self.offset = start + len;
            self.prefetch();
            self.ahead_bytes = self.ahead_bytes.saturating_sub(len);
            let mut data = vec![0u8; len as usize];
            let clone = &self.point.clones[self.volume];
            return Some(
                self.images
                    .read_at(clone, start, &mut data)
                    .map(|()| Piece::Data {
                        volume: self.volume,
                        offset: start,
                        data,
                    })
                    .map_err(Into::into),
            );
        }
    }
}

/// One replica volume at the DR site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaVolume {
    pub name: String,
    /// The working replica image that pieces are written into.
    pub image: PathBuf,
    /// The volume's size; pieces beyond it are refused.
    pub size: u64,
}

/// Applies one cycle's pieces at the DR site.
pub struct Applier {
    volumes: Vec<ReplicaVolume>,
    cycle: u64,
    digests: Vec<VolumeDigest>,
    /// Per volume, bytes written since its writeback was last started.
    unflushed: Vec<u64>,
    pub applied_bytes: u64,
}

impl Applier {
    pub fn cycle(&self) -> u64 {
        self.cycle
    }
    pub fn volumes(&self) -> &[ReplicaVolume] {
        &self.volumes
    }
}

impl Applier {
    /// Starts applying `cycle`; creates missing replica images (sparse, of the volume's size).
    pub fn begin(
        images: &mut dyn Images,
        volumes: Vec<ReplicaVolume>,
        cycle: u64,
    ) -> Result<Self, CycleError> {
        for v in &volumes {
            if !images.exists(&v.image) {
                images.create_sparse(&v.image, v.size)?;
            } else if images.size(&v.image)? != v.size {
                return Err(CycleError::Volume {
                    volume: v.name.clone(),
                    what: format!(
                        "replica {} has {} bytes, the volume {}; resize is not supported",
                        v.image.display(),
                        images.size(&v.image)?,
                        v.size
                    ),
                });
            }
        }
        let digests = vec![VolumeDigest::new(); volumes.len()];
        Ok(Applier {
            unflushed: vec![0; volumes.len()],
            volumes,
            cycle,
            digests,
            applied_bytes: 0,
        })
    }

    /// Writes one piece, refusing anything outside its volume.
    pub fn apply(&mut self, images: &mut dyn Images, piece: &Piece) -> Result<(), CycleError> {
        let (volume, offset, len) = piece.span();
        let Some(v) = self.volumes.get(volume) else {
            return Err(CycleError::Protocol {
                cycle: self.cycle,
                what: format!(
                    "piece for volume #{volume}, the cycle has {}",
                    self.volumes.len()
                ),
            });
        };
        if offset.checked_add(len).is_none_or(|end| end > v.size) {
            return Err(CycleError::Volume {
                volume: v.name.clone(),
                what: format!(
                    "piece at {offset}+{len} lies outside the volume's {} bytes",
                    v.size
                ),
            });
        }
        match piece {
            Piece::Data { data, .. } => {
                images.write_at(&v.image, offset, data)?;
                self.digests[volume].data(offset, data);
                // Written back while the next pieces arrive, so the commit's fsync is short;
                // a hint (the fsync reports any error).
                self.unflushed[volume] += len;
                if self.unflushed[volume] >= WRITEBACK_EVERY {
                    self.unflushed[volume] = 0;
                    let _ = images.start_writeback(&v.image);
                }
            }
            Piece::Zero { .. } => {
                images.punch(&v.image, offset, len)?;
                self.digests[volume].zero(offset, len);
            }
        }
        self.applied_bytes += len;
        Ok(())
    }

    /// Checks what arrived for a volume against the sender's count and digest.
    pub fn check_digest(
        &self,
        volume: usize,
        blocks: u64,
        digest: &[u8; 32],
    ) -> Result<(), CycleError> {
        let got = self.digests.get(volume).cloned().map(VolumeDigest::finish);
        if got != Some((blocks, *digest)) {
            let name = self.volumes.get(volume).map_or("?", |v| v.name.as_str());
            return Err(CycleError::Volume {
                volume: name.to_owned(),
                what: format!(
                    "cycle {}: digest of the received data does not match the sender's",
                    self.cycle
                ),
            });
        }
        Ok(())
    }

    /// Fsyncs every replica and reflinks each into `<snapshot_dir>/<volume>.img`; returns the
    /// snapshot images.
    pub fn commit(
        self,
        images: &mut dyn Images,
        snapshot_dir: &Path,
    ) -> Result<Vec<PathBuf>, CycleError> {
        for v in &self.volumes {
            images.fsync(&v.image)?;
        }
        let mut made: Vec<PathBuf> = Vec::new();
        for v in &self.volumes {
            let dst = snapshot_dir.join(format!("{}.img", v.name));
            if let Err(e) = images.clone_file(&v.image, &dst) {
                for m in &made {
                    let _ = images.remove(m);
                }
                return Err(e.into());
            }
            made.push(dst);
        }
        Ok(made)
    }
}

/// Restores the working replicas from the last committed snapshot (after an interrupted
/// cycle): each replica becomes a reflink of its snapshot image again.
pub fn restore(
    images: &mut dyn Images,
    volumes: &[ReplicaVolume],
    snapshot: &[PathBuf],
) -> Result<(), CycleError> {
    for (v, snap) in volumes.iter().zip(snapshot) {
        let tmp = v.image.with_extension("restore");
        images.remove(&tmp)?;
        images.clone_file(snap, &tmp)?;
        images.rename(&tmp, &v.image)?;
    }
    Ok(())
}
