//! `vfsdr snapshot delete` at a DR site: the checks (the VFS is a standby here, every id is a
//! committed snapshot of it, the latest only when forced, no image attached to a loop device,
//! no cycle of it being received), all before anything is deleted; then the removal, on a
//! blocking thread off the event loop, under the VFS's removal lock (never beside a prune).
use std::path::PathBuf;

use tokio::sync::oneshot;

use super::{
    agent::{Agent, Handled},
    busy::{Activity, Claim},
};
use crate::{
    api::{Response, SnapshotsDeleted},
    replication::{
        fsops::{Images, SystemImages},
        sink::{CHECKPOINT_BYTES, Sink},
    },
    state::{Role, SnapshotState, Store},
};

/// A deletion checked and ready to run. It holds its VFS: no cycle of it is received until the
/// deletion is dropped.
#[derive(Debug)]
pub struct Deletion {
    pub vfs: String,
    /// The snapshots to delete, by id, each once.
    pub ids: Vec<u64>,
    pub force: bool,
    /// The latest snapshot is among them.
    pub latest: bool,
    pool: PathBuf,
    state_dir: PathBuf,
    _held: Claim,
}

impl Agent {
    /// Checks a request to delete snapshots `ids` of `vfs`: a deletion to run, or the refusal
    /// (which deleted nothing).
    pub(super) fn delete_snapshots(&mut self, vfs: &str, ids: &[u64], force: bool) -> Handled {
        match self.check_deletion(vfs, ids, force) {
            Ok(d) => Handled::Delete(d),
            Err(message) => {
                tracing::warn!(site = %self.config.site.name, vfs = %vfs, event = "snapshot_delete_refused",
                    ids = ?ids, force, reason = %message, "snapshot deletion refused; nothing deleted");
                Handled::Now(Response::Error { message })
            }
        }
    }

    fn check_deletion(&mut self, vfs: &str, ids: &[u64], force: bool) -> Result<Deletion, String> {
        let site = self.config.site.name.clone();
        if let Some(def) = self.config.vfs.iter().find(|d| d.name == vfs) {
            return Err(format!(
                "VFS {vfs} is active at site {site}; its snapshots are kept at its DR site {}: delete them there",
                def.replication.peer
            ));
        }
        let stored = self.store.definition(vfs).map_err(|e| e.to_string())?;
        let stored = stored.ok_or_else(|| format!("unknown VFS {vfs} at site {site}"))?;
        if stored.role != Role::Standby {
            return Err(format!(
                "VFS {vfs} is {} at site {site}, not a standby: only a DR site's snapshots are deleted",
                stored.role.as_str()
            ));
        }
        let pool = self.config.resources.pool.as_ref().map(|p| p.path.clone());
        let pool = pool.ok_or_else(|| format!("site {site} has no pool (resources.pool)"))?;
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Err(format!("VFS {vfs}: name the snapshots to delete"));
        }
        let problems = self.deletion_problems(vfs, &ids, force)?;
        if !problems.is_empty() {
            return Err(format!(
                "VFS {vfs} at site {site}: nothing deleted: {}",
                problems.join("; ")
            ));
        }
        let latest = self
            .store
            .latest_snapshot(vfs)
            .map_err(|e| e.to_string())?
            .is_some_and(|s| ids.contains(&s.id));
        let held = Claim::take(vfs, Activity::Deleting).map_err(|holder| {
            format!(
                "VFS {vfs} at site {site}: nothing deleted: {holder} now; retry the deletion of snapshot(s) {} when it is done",
                list(&ids)
            )
        })?;
        Ok(Deletion {
            vfs: vfs.to_owned(),
            ids,
            force,
            latest,
            pool,
            state_dir: self.config.state_dir.clone(),
            _held: held,
        })
    }

    /// What stands against deleting snapshots `ids` of `vfs`, one line per snapshot and reason.
    fn deletion_problems(
        &mut self,
        vfs: &str,
        ids: &[u64],
        force: bool,
    ) -> Result<Vec<String>, String> {
        let snapshots = self.store.snapshots(vfs).map_err(|e| e.to_string())?;
        let latest = snapshots
            .iter()
            .filter(|s| s.state == SnapshotState::Committed)
            .map(|s| s.id)
            .max();
        let mut problems = Vec::new();
        for &id in ids {
            let Some(s) = snapshots.iter().find(|s| s.id == id) else {
                problems.push(format!(
                    "snapshot {id} does not exist (`vfsdr snapshots {vfs}` lists them)"
                ));
                continue;
            };
            if s.state != SnapshotState::Committed {
                problems.push(format!("snapshot {id} is being removed already"));
                continue;
            }
            if latest == Some(id) && !force {
                problems.push(format!(
                    "snapshot {id} is the latest: without it the next cycle has to copy every \
                     volume again (a full resync); add --force to delete it anyway"
                ));
            }
            for image in &s.images {
                let loops = self.devices.loops_of(&image.path);
                if !loops.is_empty() {
                    let loops: Vec<String> =
                        loops.iter().map(|l| l.display().to_string()).collect();
                    problems.push(format!(
                        "snapshot {id}: the image of volume {} is attached to {} (a `vfsdr snapshot \
                         mount` or the reserved mount point); unmount it first",
                        image.volume,
                        loops.join(", ")
                    ));
                }
            }
        }
        Ok(problems)
    }
}

/// `1, 2, 5`.
fn list(ids: &[u64]) -> String {
    ids.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Deletion {
    /// Removes the snapshots through `images` and forgets them in `store`, all or none: a
    /// blocking call, run on a thread of its own. The VFS is let go when it returns.
    pub fn run(self, store: Store, images: Box<dyn Images>) -> Result<SnapshotsDeleted, String> {
        let mut sink = Sink {
            store,
            images,
            pool: self.pool.clone(),
            reserve: 0,
            checkpoint_bytes: CHECKPOINT_BYTES,
        };
        let ids = sink
            .delete(&self.vfs, &self.ids)
            .map_err(|e| e.to_string())?;
        Ok(SnapshotsDeleted {
            vfs: self.vfs.clone(),
            ids,
            latest_deleted: self.latest,
        })
    }
}

/// Runs `deletion` on a blocking thread, logs it and answers `reply`.
pub(super) fn spawn(site: String, deletion: Deletion, reply: oneshot::Sender<Response>) {
    let (vfs, force) = (deletion.vfs.clone(), deletion.force);
    tokio::spawn(async move {
        let done = tokio::task::spawn_blocking(move || {
            let store = Store::open(&deletion.state_dir).map_err(|e| e.to_string())?;
            deletion.run(store, Box::new(SystemImages::new()))
        })
        .await
        .unwrap_or_else(|e| Err(format!("VFS {vfs}: the deletion stopped: {e}")));
        let response = match done {
            Ok(d) => {
                tracing::info!(site = %site, vfs = %vfs, event = "snapshots_deleted", ids = ?d.ids,
                    force, latest = d.latest_deleted, "snapshots deleted by the operator");
                Response::SnapshotsDeleted(d)
            }
            Err(message) => {
                tracing::error!(site = %site, vfs = %vfs, event = "snapshot_delete_failed",
                    force, error = %message, "snapshot deletion failed");
                Response::Error { message }
            }
        };
        let _ = reply.send(response);
    });
}

#[cfg(test)]
#[path = "snapshot_delete_tests.rs"]
mod tests;
