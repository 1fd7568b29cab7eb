//! A full DR pool pauses a VFS's replication: the DR site refused a cycle for lack of room
//! (before writing anything, or after restoring its replicas on ENOSPC), so nothing is lost:
//! its latest snapshot is intact and the active site keeps its clones. One alert
//! (`replication_paused`, error) when the pause begins, not one per retry; cycles are retried
//! every interval (and by `vfsdr replicate --now`), and `replication_resumed` is logged when one
//! is committed again. `vfsdr status` shows the pause.
//!
//! The pause is kept in the state store, so a restarted agent still shows it and does not raise
//! the alert again.
use super::Cycles;
use crate::{api::Paused, replication::wire::PoolFull, state::Store};

fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Cycles {
    /// The DR site `peer` refused a cycle of `vfs`: its pool is full.
    pub(super) fn pool_full(
        &mut self,
        store: &mut Store,
        site: &str,
        vfs: &str,
        peer: &str,
        full: &PoolFull,
    ) {
        match self.paused.get_mut(vfs) {
            Some(p) => {
                p.needs = full.needs;
                p.free = full.free;
                p.refused_cycles += 1;
                tracing::warn!(site = %site, vfs = %vfs, peer = %peer, event = "replication_still_paused",
                    needs = full.needs, free = full.free, refused_cycles = p.refused_cycles,
                    "DR pool still full; will retry at the next interval");
            }
            None => {
                tracing::error!(site = %site, vfs = %vfs, peer = %peer, event = "replication_paused",
                    pool = %full.pool, needs = full.needs, free = full.free,
                    "replication paused: DR pool full at {peer} (needs {}, free {}); the DR site keeps its latest snapshot, cycles are retried every interval",
                    full.needs, full.free);
                self.paused.insert(
                    vfs.to_owned(),
                    Paused {
                        vfs: vfs.to_owned(),
                        site: peer.to_owned(),
                        pool: full.pool.clone(),
                        needs: full.needs,
                        free: full.free,
                        since_unix_s: unix_s(),
                        refused_cycles: 1,
                    },
                );
            }
        }
        let value = serde_json::to_value(&self.paused[vfs]).unwrap_or_default();
        if let Err(e) = store.source_paused(vfs, &value) {
            tracing::warn!(site = %site, vfs = %vfs, error = %e, "cannot record the pause");
        }
    }

    /// A cycle of `vfs` was committed: a pause ends.
    pub(super) fn resumed(&mut self, store: &mut Store, site: &str, vfs: &str, cycle: u64) {
        if let Some(p) = self.paused.remove(vfs) {
            tracing::info!(site = %site, vfs = %vfs, peer = %p.site, event = "replication_resumed", cycle,
                refused_cycles = p.refused_cycles, paused_s = unix_s().saturating_sub(p.since_unix_s),
                "replication resumed: the DR site committed a cycle again");
            if let Err(e) = store.source_paused(vfs, &serde_json::Value::Null) {
                tracing::warn!(site = %site, vfs = %vfs, error = %e, "cannot record the end of the pause");
            }
        }
    }

    /// Takes back the pauses the store holds for `vfss` (at start).
    pub(super) fn restore_paused<'a>(
        &mut self,
        store: &Store,
        site: &str,
        vfss: impl IntoIterator<Item = &'a str>,
    ) {
        for vfs in vfss {
            let paused = store.source_state(vfs).map(|s| s.map(|s| s.paused));
            match paused {
                Ok(Some(value)) if !value.is_null() => {
                    match serde_json::from_value::<Paused>(value) {
                        Ok(p) => {
                            tracing::warn!(site = %site, vfs = %vfs, peer = %p.site, event = "replication_still_paused",
                            since_unix_s = p.since_unix_s, refused_cycles = p.refused_cycles,
                            "replication was paused (DR pool full) before the restart; cycles are retried every interval");
                            self.paused.insert(vfs.to_owned(), p);
                        }
                        Err(e) => tracing::warn!(site = %site, vfs = %vfs, error = %e,
                        "the recorded pause cannot be read; ignored"),
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(site = %site, vfs = %vfs, error = %e, "cannot read the recorded pause")
                }
            }
        }
    }
}
