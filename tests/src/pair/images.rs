//! The images of a [`Pair`]'s snapshots, clones and replicas, and checks of what they hold.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use serde_json::Value;

use super::Pair;
use crate::check::{differing_blocks, same_tree, sh};

impl Pair {
    /// A volume's image in DR snapshot `id`.
    pub fn snapshot_image(&self, id: u64, volume: &str) -> PathBuf {
        self.b
            .pool()
            .mount_point()
            .join(format!("snapshots/{}/{id}/{volume}.img", self.vfs()))
    }

    /// A volume's point-in-time clone of `cycle` at the active site (kept until the next cycle
    /// is acknowledged).
    pub fn clone_image(&self, cycle: u64, volume: &str) -> PathBuf {
        self.a
            .pool()
            .mount_point()
            .join(format!("clones/{}/{cycle}/{volume}.img", self.vfs()))
    }

    /// A volume's replica at the DR site (the image cycles are applied to).
    pub fn replica_image(&self, volume: &str) -> PathBuf {
        self.b
            .pool()
            .mount_point()
            .join(format!("replicas/{}/{volume}.img", self.vfs()))
    }

    /// The DR snapshot of cycle report `report` equals, block for block, the clones it was made
    /// from, for every volume.
    pub fn check_snapshot(&self, report: &Value) -> anyhow::Result<()> {
        let (id, cycle) = (number(report, "snapshot")?, number(report, "cycle")?);
        for (volume, _) in &self.options.volumes {
            let snap = self.snapshot_image(id, volume);
            let clone = self.clone_image(cycle, volume);
            let differ = differing_blocks(&snap, &clone)?;
            ensure!(
                differ.is_empty(),
                "snapshot {} differs from the clone {} in {} blocks, first {:?}",
                snap.display(),
                clone.display(),
                differ.len(),
                &differ[..differ.len().min(8)]
            );
        }
        Ok(())
    }

    /// The file system of `volume` in the DR snapshot of cycle report `report` holds the same
    /// tree as `expected` (mounted read-only for the compare).
    pub fn snapshot_holds(
        &self,
        report: &Value,
        volume: &str,
        expected: &Path,
    ) -> anyhow::Result<()> {
        let image = self.snapshot_image(number(report, "snapshot")?, volume);
        self.with_image_mounted(&image, |at| same_tree(expected, at))
    }

    /// Mounts a snapshot or clone image read-only (`ro,nouuid,norecovery`: a clone of a frozen
    /// XFS) at a directory of the lab, runs `f` on it, and unmounts, also when `f` fails.
    pub fn with_image_mounted<T>(
        &self,
        image: &Path,
        f: impl FnOnce(&Path) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        with_image_mounted(image, &self.lab.dir().join("check"), f)
    }
}

/// `report[key]` as a number, e.g. the `snapshot` or `cycle` of a cycle report.
pub fn number(report: &Value, key: &str) -> anyhow::Result<u64> {
    report[key]
        .as_u64()
        .with_context(|| format!("no {key} in {report}"))
}

/// Mounts `image` read-only (`ro,nouuid,norecovery,loop`) at `at` (created if missing), runs `f`,
/// unmounts (the loop device goes with it).
pub fn with_image_mounted<T>(
    image: &Path,
    at: &Path,
    f: impl FnOnce(&Path) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    std::fs::create_dir_all(at)?;
    sh(&format!(
        "mount -o ro,nouuid,norecovery,loop '{}' '{}'",
        image.display(),
        at.display()
    ))?;
    let r = f(at);
    let u = sh(&format!("umount '{}'", at.display()));
    let r = r?;
    u?;
    Ok(r)
}
