//! The volumes of the VFSs active at this site: brought up (created, formatted, attached,
//! mounted) when the agent starts and when its configuration is reloaded; taken down
//! (unmounted, detached; images kept) when a VFS or volume leaves the configuration: at a
//! reload, or at the next start for a VFS the store still records as active here. Stopping the
//! agent leaves them mounted: an agent restart or upgrade does not take the file server
//! offline, the next start finds them present.
//!
//! A volume that cannot be brought up is logged with its step and shown by `vfsdr status`;
//! the other volumes and VFSs go on.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::agent::Agent;
use crate::{
    config::Config,
    state::Role,
    volumes::lifecycle::{self, ActiveVolume, Stage},
};

/// A VFS volume's state at its active site, for `vfsdr status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfsVolumeStatus {
    pub vfs: String,
    pub volume: String,
    pub image: PathBuf,
    pub mount: PathBuf,
    /// Mounted at its mount path from its image.
    pub ready: bool,
    /// `mounted at X via /dev/loopN`, or what is missing.
    pub state: String,
    /// Why the last attempt to bring it up failed, if it did.
    pub error: Option<String>,
}

/// The volumes of the VFSs defined in `config` (active here), resolved at this site; none
/// without a pool.
pub fn active_volumes(config: &Config) -> Vec<ActiveVolume> {
    let Some(pool) = &config.resources.pool else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for def in &config.vfs {
        for v in &def.volumes {
            out.push(ActiveVolume {
                vfs: def.name.clone(),
                volume: v.name.clone(),
                image: super::volume_image(&pool.path, &def.name, &v.name),
                mount: v.mount_at(&config.resources.mount_root),
                size_bytes: v.size_bytes,
                filesystem: v.filesystem,
            });
        }
    }
    out
}

fn event(stage: Stage, up: bool) -> &'static str {
    match (stage, up) {
        (Stage::Image, _) => "volume_created",
        (Stage::FileSystem, _) => "volume_formatted",
        (Stage::Loop, true) => "volume_attached",
        (Stage::Mount, true) => "volume_mounted",
        (Stage::Loop, false) => "volume_detached",
        (Stage::Mount, false) => "volume_unmounted",
    }
}

impl Agent {
    /// Brings up every volume of the VFSs `config` defines (active here); failures are logged
    /// and kept per volume.
    pub(super) fn bring_up_volumes(&mut self, config: &Config) {
        let site = config.site.name.clone();
        for v in active_volumes(config) {
            let key = v.name();
            match lifecycle::bring_up(&v, self.devices.as_mut(), self.mounts.as_mut()) {
                Ok(up) => {
                    self.volume_errors.remove(&key);
                    for s in &up.steps {
                        if s.changed {
                            tracing::info!(site = %site, vfs = %v.vfs, volume = %v.volume,
                                event = event(s.stage, true), step = %s.stage, detail = %s.detail,
                                "VFS volume {}", s.stage);
                        } else {
                            tracing::debug!(site = %site, vfs = %v.vfs, volume = %v.volume,
                                event = "volume_present", step = %s.stage, detail = %s.detail,
                                "VFS volume {} present", s.stage);
                        }
                    }
                    if let Some(size) = up.smaller_than_configured {
                        tracing::warn!(site = %site, vfs = %v.vfs, volume = %v.volume,
                            event = "volume_size_differs", image_bytes = size,
                            configured_bytes = v.size_bytes, image = %v.image.display(),
                            "the image is smaller than configured; it is not grown");
                    }
                }
                Err(e) => {
                    tracing::error!(site = %site, vfs = %v.vfs, volume = %v.volume,
                        event = "volume_failed", step = %e.stage, error = %e,
                        "VFS volume not brought up; the other volumes go on");
                    self.volume_errors.insert(key, e.to_string());
                }
            }
        }
    }

    /// At start: the VFSs the store records as active here that the configuration no longer
    /// defines (removed while the agent was down) have their volumes taken down.
    pub(super) fn take_down_removed_volumes(&mut self) {
        let stored = match self.store.definitions() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(site = %self.config.site.name, event = "volume_failed", error = %e,
                    "cannot read the VFSs recorded here; volumes of removed VFSs stay as they are");
                return;
            }
        };
        let mut old = self.config.clone();
        old.vfs = stored
            .into_iter()
            .filter(|s| s.role == Role::Active)
            .filter(|s| !self.config.vfs.iter().any(|d| d.name == s.def.name))
            .map(|s| s.def)
            .collect();
        if !old.vfs.is_empty() {
            let current = self.config.clone();
            self.take_down_volumes(&old, &current);
        }
    }

    /// Takes down the volumes active under `old` that `new` no longer has (or has elsewhere).
    pub(super) fn take_down_volumes(&mut self, old: &Config, new: &Config) {
        let site = new.site.name.clone();
        let wanted = active_volumes(new);
        for v in active_volumes(old)
            .into_iter()
            .filter(|v| !wanted.contains(v))
        {
            // The same image and mount under new settings (a size, a file system) stay up.
            if wanted
                .iter()
                .any(|w| w.image == v.image && w.mount == v.mount)
            {
                continue;
            }
            self.volume_errors.remove(&v.name());
            match lifecycle::bring_down(&v, self.devices.as_mut(), self.mounts.as_mut()) {
                Ok(steps) => {
                    for s in steps {
                        let event = if s.changed {
                            event(s.stage, false)
                        } else {
                            "volume_left"
                        };
                        tracing::info!(site = %site, vfs = %v.vfs, volume = %v.volume, event,
                            step = %s.stage, detail = %s.detail,
                            "VFS volume no longer configured here (its image is kept)");
                    }
                }
                Err(e) => tracing::error!(site = %site, vfs = %v.vfs, volume = %v.volume,
                    event = "volume_failed", step = %e.stage, error = %e,
                    "VFS volume no longer configured here could not be taken down"),
            }
        }
    }

    /// The state of each volume of the VFSs active here, as the kernel shows it now.
    pub fn vfs_volume_states(&mut self) -> Vec<VfsVolumeStatus> {
        let mut out = Vec::new();
        for v in active_volumes(&self.config) {
            let seen = lifecycle::observe(&v, self.devices.as_mut(), self.mounts.as_mut());
            let (ready, state) = match &seen {
                Ok(seen) => lifecycle::describe(&v, seen),
                Err(e) => (false, e.to_string()),
            };
            out.push(VfsVolumeStatus {
                error: self.volume_errors.get(&v.name()).cloned(),
                vfs: v.vfs,
                volume: v.volume,
                image: v.image,
                mount: v.mount,
                ready,
                state,
            });
        }
        out
    }
}

#[cfg(test)]
#[path = "volumes_tests.rs"]
mod tests;
