//! The DR site's side of a cycle: checks that the sender owns the VFS and that the cycle fits
//! what this site holds, undoes an interrupted cycle, applies the pieces into the working
//! replicas, and commits a group-consistent snapshot in the catalog. Synchronous: it runs on a
//! thread of its own, fed by the data connection.
//!
//! Room: before a cycle is applied, the pool's free space less its configured reserve must
//! cover what the cycle writes ([`needed_bytes`]); otherwise the cycle is refused with
//! [`SinkError::PoolFull`] and nothing is touched. ENOSPC (or EDQUOT) met while applying or
//! committing is the same refusal, after the working replicas are restored from the last
//! committed snapshot (which stays as it was).
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{
    cycle::{Applier, CycleError, Piece, ReplicaVolume, restore},
    fsops::Images,
    redo,
    resume::{Checkpoint, Frontier},
    wire::{BaseMissing, Begin, PoolFull},
};
use crate::{
    config::VfsDef,
    state::{Role, Snapshot, SnapshotImage, StateError, Store},
};

/// Where a VFS's snapshots live in a pool: `<pool>/snapshots/<vfs>/<id>/`.
pub fn snapshot_dir(pool: &Path, vfs: &str, id: u64) -> PathBuf {
    pool.join("snapshots").join(vfs).join(id.to_string())
}

/// The working replicas of a VFS, in the order of its definition.
pub fn replica_volumes(pool: &Path, def: &VfsDef) -> Vec<ReplicaVolume> {
    def.volumes
        .iter()
        .map(|v| ReplicaVolume {
            name: v.name.clone(),
            image: crate::resources::replica_image(pool, &def.name, &v.name),
            size: v.size_bytes,
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("VFS {vfs}: {what}")]
    Refused { vfs: String, what: String },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Cycle(#[from] CycleError),
    #[error(transparent)]
    Fs(#[from] super::fsops::FsError),
    /// No room in the pool for the cycle: a refusal of its own kind (the sender pauses).
    #[error("VFS {vfs}: the DR pool {} is full: the cycle needs {} bytes, {} are free (beyond the reserve)", full.pool, full.needs, full.free)]
    PoolFull { vfs: String, full: PoolFull },
    /// The delta applies to a snapshot that is not this site's latest: a refusal of its own
    /// kind (the sender resyncs with a full copy).
    #[error("VFS {vfs}: the delta applies to snapshot {}, this site's latest is {}", missing.base,
        missing.latest.map_or("none".to_string(), |l| l.to_string()))]
    BaseMissing { vfs: String, missing: BaseMissing },
}

/// Room kept for file-system metadata per volume on top of the data a cycle writes.
pub const METADATA_MARGIN: u64 = 1 << 20;

/// What a cycle needs in the pool, conservatively: every byte it writes lands in a new block
/// (copy on write: the replica shares its blocks with the snapshots), rounded up to 4 KiB
/// blocks, plus [`METADATA_MARGIN`] per volume; a volume whose write size the sender did not
/// say counts whole.
pub fn needed_bytes(b: &Begin) -> u64 {
    b.volumes
        .iter()
        .map(|v| {
            v.write_bytes
                .unwrap_or(v.size)
                .div_ceil(super::cycle::BLOCK)
                .saturating_mul(super::cycle::BLOCK)
                .saturating_add(METADATA_MARGIN)
        })
        .fold(0, u64::saturating_add)
}

/// True when `e` says the file system is out of space (ENOSPC, or EDQUOT for a quota).
fn is_no_space(e: &SinkError) -> bool {
    let fs = match e {
        SinkError::Fs(f) | SinkError::Cycle(CycleError::Fs(f)) => f,
        _ => return false,
    };
    matches!(fs.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// A full copy records how far it got after this many bytes ([`Sink::checkpoint_bytes`])...
pub const CHECKPOINT_BYTES: u64 = 64 << 20;
/// ... or this long, whichever comes first.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

pub struct Sink {
    pub store: Store,
    pub images: Box<dyn Images>,
    pub pool: PathBuf,
    /// Bytes of the pool always left free (`resources.pool.reserve`).
    pub reserve: u64,
    /// Bytes of a full copy between two checkpoints (fsync of the replicas, then the offsets
    /// recorded); [`CHECKPOINT_BYTES`] in the agent.
    pub checkpoint_bytes: u64,
}

/// What [`Sink::begin`] made of a cycle.
pub enum Began {
    /// Ready to receive its data.
    Receiving(Receiving),
    /// This very point was committed already (the sender did not get the answer).
    Committed(Snapshot),
}

/// A cycle being received.
pub struct Receiving {
    pub begin: Begin,
    applier: Applier,
    pub changed_bytes: u64,
    /// Per volume, where the sender starts (an interrupted full copy of the same point).
    pub resume: Vec<u64>,
    /// A full copy's progress (none for a delta, or a sender that names no point).
    frontier: Option<Frontier>,
    unsynced: u64,
    last_checkpoint: Instant,
}

impl Sink {
    /// Accepts (or refuses) the cycle `b` from site `from`, undoing an interrupted one first.
    pub fn begin(&mut self, from: &str, b: &Begin) -> Result<Began, SinkError> {
        let refuse = |what: String| SinkError::Refused {
            vfs: b.vfs.clone(),
            what,
        };
        let Some(stored) = self.store.definition(&b.vfs)? else {
            return Err(refuse(
                "unknown at this site (its definition was never received)".into(),
            ));
        };
        if stored.role != Role::Standby {
            return Err(refuse(
                "is active at this site; it does not take replication".into(),
            ));
        }
        if stored.from_site != from {
            return Err(refuse(format!(
                "site {from} does not own it (its definition came from {})",
                stored.from_site
            )));
        }
        if b.epoch < stored.epoch {
            return Err(refuse(format!(
                "cycle {} carries epoch {}, this site holds {}",
                b.cycle, b.epoch, stored.epoch
            )));
        }
        let volumes = replica_volumes(&self.pool, &stored.def);
        let offered: Vec<(&str, u64)> = b
            .volumes
            .iter()
            .map(|v| (v.name.as_str(), v.size))
            .collect();
        let expected: Vec<(&str, u64)> =
            volumes.iter().map(|v| (v.name.as_str(), v.size)).collect();
        if offered != expected {
            return Err(refuse(format!(
                "cycle {} has volumes {offered:?}, the definition {expected:?}",
                b.cycle
            )));
        }
        let mut latest = self.store.latest_snapshot(&b.vfs)?;
        if let Some(done) = redo::already_committed(self, b, latest.as_ref())? {
            return Ok(Began::Committed(done));
        }
        let dropped = redo::drop_unacknowledged(self, b)?;
        if dropped {
            latest = self.store.latest_snapshot(&b.vfs)?;
        }
        if let Some(base) = b.base
            && latest.as_ref().map(|s| s.id) != Some(base)
        {
            return Err(SinkError::BaseMissing {
                vfs: b.vfs.clone(),
                missing: BaseMissing {
                    base,
                    latest: latest.as_ref().map(|s| s.id),
                },
            });
        }
        let resume = redo::resumable(self, b, &volumes)?;
        if resume.is_none()
            && let Some(flight) = self.store.in_flight(&b.vfs)?
        {
            // An interrupted cycle: the replicas are somewhere between two states.
            self.undo(&b.vfs, &volumes, latest.as_ref())?;
            self.store.abandon_cycle(&b.vfs)?;
            tracing::warn!(vfs = %b.vfs, event = "cycle_abandoned", cycle = flight.cycle,
                "an interrupted cycle was undone from the last snapshot");
        } else if dropped {
            // The replicas hold a dropped snapshot's state.
            self.undo(&b.vfs, &volumes, latest.as_ref())?;
        }
        // A full copy from the start replaces the replicas: with no snapshot sharing their
        // blocks (an abandoned first copy), removing them frees what they hold.
        let freed = if b.base.is_none() && resume.is_none() && latest.is_none() {
            self.held_bytes(&volumes)?
        } else {
            0
        };
        self.check_room(b, freed)?;
        if b.base.is_none() && resume.is_none() {
            // A full copy: start from empty replicas (the snapshots keep the older states).
            for v in &volumes {
                self.images.remove(&v.image)?;
            }
        }
        self.store.begin_cycle(&b.vfs, b.cycle, b.base)?;
        if let (Some(point), None) = (b.point, &resume) {
            // The point is on record from the start (a commit records it with the snapshot).
            let start = Checkpoint {
                point,
                offsets: vec![0; volumes.len()],
            };
            let value = serde_json::to_value(&start).unwrap_or_default();
            self.store.cycle_progress(&b.vfs, b.cycle, &value)?;
        }
        // Leftovers of a commit interrupted before it was recorded (the cycle is above every
        // recorded snapshot, so these are no snapshot's).
        let dir = snapshot_dir(&self.pool, &b.vfs, b.cycle);
        for v in &volumes {
            self.images.remove(&dir.join(format!("{}.img", v.name)))?;
        }
        let sizes: Vec<u64> = volumes.iter().map(|v| v.size).collect();
        let offsets = resume.unwrap_or_else(|| vec![0; volumes.len()]);
        if offsets.iter().any(|&o| o > 0) {
            tracing::info!(vfs = %b.vfs, event = "full_copy_resumed", cycle = b.cycle, offsets = ?offsets,
                "the interrupted full copy of this point resumes where its replicas were synced");
        }
        let frontier =
            (b.base.is_none() && b.point.is_some()).then(|| Frontier::new(sizes, offsets.clone()));
        let applier = Applier::begin(self.images.as_mut(), volumes, b.cycle)?;
        Ok(Began::Receiving(Receiving {
            begin: b.clone(),
            applier,
            changed_bytes: 0,
            resume: offsets,
            frontier,
            unsynced: 0,
            last_checkpoint: Instant::now(),
        }))
    }

    /// Free bytes of the pool beyond its reserve.
    fn free(&mut self) -> Result<u64, SinkError> {
        Ok(self
            .images
            .free_space(&self.pool)?
            .saturating_sub(self.reserve))
    }

    fn pool_full(&mut self, b: &Begin) -> SinkError {
        let free = self.free().unwrap_or(0);
        SinkError::PoolFull {
            vfs: b.vfs.clone(),
            full: PoolFull {
                pool: self.pool.display().to_string(),
                needs: needed_bytes(b),
                free,
            },
        }
    }

    /// Bytes of data the replicas hold (their holes not counted).
    fn held_bytes(&mut self, volumes: &[ReplicaVolume]) -> Result<u64, SinkError> {
        let mut held = 0u64;
        for v in volumes {
            if self.images.exists(&v.image) {
                let ranges = self.images.data_ranges(&v.image)?;
                held = ranges
                    .iter()
                    .fold(held, |sum, &(_, len)| sum.saturating_add(len));
            }
        }
        Ok(held)
    }

    /// Refuses `b` as [`SinkError::PoolFull`] unless the pool's free bytes beyond its reserve,
    /// plus `freed` (what the cycle frees before it writes), cover what it needs.
    fn check_room(&mut self, b: &Begin, freed: u64) -> Result<(), SinkError> {
        let (needs, free) = (needed_bytes(b), self.free()?.saturating_add(freed));
        if free < needs {
            tracing::warn!(vfs = %b.vfs, event = "pool_full", cycle = b.cycle, needs, free,
                pool = %self.pool.display(), "no room in the pool for the cycle; refused");
            return Err(SinkError::PoolFull {
                vfs: b.vfs.clone(),
                full: PoolFull {
                    pool: self.pool.display().to_string(),
                    needs,
                    free,
                },
            });
        }
        Ok(())
    }

    /// After ENOSPC: the working replicas go back to the last snapshot (freeing what the cycle
    /// wrote), the cycle is forgotten, and the error becomes [`SinkError::PoolFull`]. Any other
    /// error is returned as it is.
    fn out_of_space(&mut self, b: &Begin, e: SinkError) -> SinkError {
        if !is_no_space(&e) {
            return e;
        }
        let volumes = match self.store.definition(&b.vfs) {
            Ok(Some(stored)) => replica_volumes(&self.pool, &stored.def),
            _ => return e,
        };
        let latest = self.store.latest_snapshot(&b.vfs).ok().flatten();
        let mut undone = self.undo(&b.vfs, &volumes, latest.as_ref());
        if undone.as_ref().is_err_and(is_no_space) {
            // No room even for the reflinks of the restore: drop the half-written replicas
            // (the snapshot holds their state) to free what the cycle wrote, then restore.
            for v in &volumes {
                let _ = self.images.remove(&v.image);
            }
            undone = self.undo(&b.vfs, &volumes, latest.as_ref());
        }
        if let Err(undo) = undone {
            tracing::error!(vfs = %b.vfs, event = "undo_failed", error = %undo,
                "cannot restore the replicas after ENOSPC; the next cycle restores them");
            return self.pool_full(b);
        }
        let _ = self.store.abandon_cycle(&b.vfs);
        tracing::warn!(vfs = %b.vfs, event = "pool_full", cycle = b.cycle, error = %e,
            "the pool ran out of space while applying; replicas restored from the last snapshot");
        self.pool_full(b)
    }

    /// Brings the replicas back to the last snapshot (or to nothing, before the first).
    pub(super) fn undo(
        &mut self,
        _vfs: &str,
        volumes: &[ReplicaVolume],
        latest: Option<&Snapshot>,
    ) -> Result<(), SinkError> {
        match latest {
            Some(s) => {
                let paths: Vec<PathBuf> = s.images.iter().map(|i| i.path.clone()).collect();
                restore(self.images.as_mut(), volumes, &paths)?;
            }
            None => {
                for v in volumes {
                    self.images.remove(&v.image)?;
                }
            }
        }
        Ok(())
    }

    /// Writes one piece. ENOSPC restores the replicas and returns [`SinkError::PoolFull`]: the
    /// cycle is over, `r` must not be used again.
    pub fn apply(&mut self, r: &mut Receiving, piece: &Piece) -> Result<(), SinkError> {
        if let Some(f) = r.frontier.as_mut() {
            f.advance(piece).map_err(|e| SinkError::Refused {
                vfs: r.begin.vfs.clone(),
                what: format!("cycle {}: {e}", r.begin.cycle),
            })?;
        }
        let before = r.applier.applied_bytes;
        if let Err(e) = r.applier.apply(self.images.as_mut(), piece) {
            return Err(self.out_of_space(&r.begin, e.into()));
        }
        r.changed_bytes = r.applier.applied_bytes;
        r.unsynced += r.applier.applied_bytes - before;
        if r.frontier.is_some()
            && (r.unsynced >= self.checkpoint_bytes
                || r.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL)
            && let Err(e) = self.checkpoint(r)
        {
            return Err(self.out_of_space(&r.begin, e));
        }
        Ok(())
    }

    /// Fsyncs the replicas, then records how far the full copy got.
    fn checkpoint(&mut self, r: &mut Receiving) -> Result<(), SinkError> {
        let (Some(f), Some(point)) = (r.frontier.as_ref(), r.begin.point) else {
            return Ok(());
        };
        for v in r.applier.volumes() {
            self.images.fsync(&v.image)?;
        }
        let progress = Checkpoint {
            point,
            offsets: f.offsets().to_vec(),
        };
        let value = serde_json::to_value(&progress).unwrap_or_default();
        self.store
            .cycle_progress(&r.begin.vfs, r.begin.cycle, &value)?;
        tracing::debug!(vfs = %r.begin.vfs, event = "full_copy_checkpoint", cycle = r.begin.cycle,
            offsets = ?progress.offsets, "full copy progress recorded");
        r.unsynced = 0;
        r.last_checkpoint = Instant::now();
        Ok(())
    }

    pub fn volume_end(
        &mut self,
        r: &mut Receiving,
        volume: usize,
        blocks: u64,
        digest: &[u8; 32],
    ) -> Result<(), SinkError> {
        r.applier.check_digest(volume, blocks, digest)?;
        if let Some(f) = r.frontier.as_mut() {
            f.volume_done(volume);
        }
        Ok(())
    }

    /// Fsyncs the replicas, reflinks them into the snapshot and records it. The snapshots the
    /// retention grid no longer keeps are removed after the answer ([`Sink::prune`]).
    pub fn commit(&mut self, r: Receiving, shipped_bytes: u64) -> Result<Snapshot, SinkError> {
        let b = r.begin;
        let dir = snapshot_dir(&self.pool, &b.vfs, b.cycle);
        let volumes = r.applier.volumes().to_vec();
        let paths = match r.applier.commit(self.images.as_mut(), &dir) {
            Ok(p) => p,
            Err(e) => return Err(self.out_of_space(&b, e.into())),
        };
        let mut images = Vec::new();
        for (v, p) in volumes.iter().zip(paths) {
            images.push(SnapshotImage {
                volume: v.name.clone(),
                size: self.images.size(&p)?,
                path: p,
                allocated: 0,
            });
        }
        let snap = self.store.commit_snapshot(
            &b.vfs,
            b.cycle,
            b.epoch,
            &images,
            r.changed_bytes,
            shipped_bytes,
        )?;
        // Pruning waits until the sender has its answer (`super::prune`).
        Ok(snap)
    }
}
