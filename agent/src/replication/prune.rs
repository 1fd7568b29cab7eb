//! Removing the snapshots a VFS's retention grid no longer keeps, once the sender has the
//! commit's answer.
//!
//! The DR site answers a commit first and prunes after: removing a thousand snapshots after an
//! operator tightened the grid takes seconds (4.9 s for 1,022 in the lab), which must not hold
//! the sender's cycle waiting. Removal is marked first, files deleted, then forgotten, so a crash
//! in between is finished by the next prune. One removal per VFS runs at a time: a prune that
//! finds another one running for its VFS leaves the work to it (the next commit prunes again),
//! while dropping unacknowledged snapshots at a cycle's start waits for it.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, TryLockError},
};

use super::sink::{Sink, SinkError, snapshot_dir};
use crate::state::SnapshotState;

/// The lock of `vfs`'s snapshot removals.
fn lock_of(vfs: &str) -> Arc<Mutex<()>> {
    static LOCKS: Mutex<Option<HashMap<String, Arc<Mutex<()>>>>> = Mutex::new(None);
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    locks
        .get_or_insert_with(HashMap::new)
        .entry(vfs.to_owned())
        .or_default()
        .clone()
}

impl Sink {
    /// Removes the snapshots the VFS's retention grid no longer keeps (and finishes removals
    /// an earlier crash interrupted). Returns the ids removed; none when another removal of
    /// this VFS is running.
    pub fn prune(&mut self, vfs: &str) -> Result<Vec<u64>, SinkError> {
        let lock = lock_of(vfs);
        let _held: MutexGuard<'_, ()> = match lock.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                tracing::debug!(vfs = %vfs, "a prune of this VFS is running; left to it");
                return Ok(Vec::new());
            }
        };
        let Some(stored) = self.store.definition(vfs)? else {
            return Ok(Vec::new());
        };
        let committed = self.store.committed_times(vfs)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let drop = super::retention::prune(&committed, &stored.def.snapshots, now);
        self.store.mark_pruning(vfs, &drop)?;
        let removed = self.remove_marked(vfs)?;
        if !removed.is_empty() {
            tracing::info!(vfs = %vfs, event = "snapshots_pruned", count = removed.len(), ids = ?removed,
                "snapshots outside the retention grid removed");
        }
        Ok(removed)
    }

    /// Marks `ids` for removal and removes every marked snapshot of `vfs`, after any prune of
    /// it that is running.
    pub(super) fn remove_now(&mut self, vfs: &str, ids: &[u64]) -> Result<Vec<u64>, SinkError> {
        let lock = lock_of(vfs);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.store.mark_pruning(vfs, ids)?;
        self.remove_marked(vfs)
    }

    /// Deletes snapshots `ids` of `vfs` for an operator, after any prune of it that is running:
    /// each must still be committed then (a prune may have removed one since the request was
    /// checked), or none is deleted ([`SinkError::Refused`]). Returns the ids removed, with any
    /// an interrupted removal had left marked.
    pub fn delete(&mut self, vfs: &str, ids: &[u64]) -> Result<Vec<u64>, SinkError> {
        let lock = lock_of(vfs);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        for &id in ids {
            let committed = self.store.snapshot(vfs, id)?;
            if committed.is_none_or(|s| s.state != SnapshotState::Committed) {
                return Err(SinkError::Refused {
                    vfs: vfs.to_owned(),
                    what: format!(
                        "snapshot {id} is no longer a committed snapshot (pruned meanwhile?); nothing deleted"
                    ),
                });
            }
        }
        self.store.mark_pruning(vfs, ids)?;
        self.remove_marked(vfs)
    }

    /// Deletes the files of the snapshots marked `pruning`, then forgets them. The caller holds
    /// the VFS's removal lock.
    fn remove_marked(&mut self, vfs: &str) -> Result<Vec<u64>, SinkError> {
        // Files first, then the catalog in one transaction (also for those removed before an
        // error: a crash in between leaves them marked, and their removal is done again).
        let mut removed = Vec::new();
        let mut failed = None;
        for s in self.store.pruning_snapshots(vfs)? {
            let files = s
                .images
                .iter()
                .try_for_each(|i| self.images.remove(&i.path));
            if let Err(e) = files {
                failed = Some(e);
                break;
            }
            let _ = self.images.remove_dir(&snapshot_dir(&self.pool, vfs, s.id));
            removed.push(s.id);
        }
        self.store.forget_snapshots(vfs, &removed)?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        Ok(removed)
    }
}
