//! The mount seam: what is mounted where, which file systems the kernel supports, how much room
//! a pool has, and the read-only mounts that hold reserved mount points. `SystemMounts` is the
//! real one (`/proc/self/mountinfo`, `/proc/filesystems`, statvfs, loop + mount(2)), `FakeMounts`
//! the one for tests.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
    pub options: String,
}

/// Size and allocated bytes of a (sparse) file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSize {
    pub size: u64,
    pub allocated: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Space {
    pub free: u64,
    pub total: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Loop(#[from] crate::volumes::VolumeError),
}

/// The kernel surface for mounts.
pub trait Mounts: Send {
    fn mounts(&mut self) -> Result<Vec<MountEntry>, MountError>;
    /// File system types the kernel supports now.
    fn filesystems(&mut self) -> Result<Vec<String>, MountError>;
    /// Free and total bytes of the file system holding `path`.
    fn space(&mut self, path: &Path) -> Result<Space, MountError>;
    /// Size of a regular file, `None` if it does not exist.
    fn file(&mut self, path: &Path) -> Result<Option<FileSize>, MountError>;
    /// Creates `dir` (and parents); returns whether it had to.
    fn make_dir(&mut self, dir: &Path) -> Result<bool, MountError>;
    /// Removes the empty directory `dir`.
    fn remove_dir(&mut self, dir: &Path) -> Result<(), MountError>;
    /// Attaches `image` read-only to a loop device and mounts it read-only at `target` with
    /// `options`; returns the loop device (detached again by the kernel at unmount).
    fn mount_image_ro(
        &mut self,
        image: &Path,
        target: &Path,
        fstype: &str,
        options: &str,
    ) -> Result<PathBuf, MountError>;
    /// Mounts the block device `device` read-write at `target` (nosuid, nodev).
    fn mount_rw(&mut self, device: &Path, target: &Path, fstype: &str) -> Result<(), MountError>;
    fn unmount(&mut self, target: &Path) -> Result<(), MountError>;
    /// The backing file of a loop device, if it is one.
    fn loop_backing(&mut self, device: &str) -> Option<PathBuf>;
}

/// Mounts in memory.
#[derive(Debug, Default, Clone)]
pub struct FakeMounts {
    pub mounts: Vec<MountEntry>,
    pub filesystems: Vec<String>,
    pub files: BTreeMap<PathBuf, FileSize>,
    pub dirs: Vec<PathBuf>,
    /// Free/total of every path.
    pub space: Option<Space>,
    pub loops: BTreeMap<String, PathBuf>,
    /// Operations that fail (`mount_rw`).
    pub failing: Vec<&'static str>,
}

impl FakeMounts {
    pub fn new() -> Self {
        FakeMounts {
            filesystems: vec!["xfs".into(), "ext4".into(), "tmpfs".into()],
            space: Some(Space {
                free: 100 << 30,
                total: 200 << 30,
            }),
            ..Default::default()
        }
    }
    pub fn with_file(mut self, path: &str, size: u64, allocated: u64) -> Self {
        self.files.insert(path.into(), FileSize { size, allocated });
        self
    }
    pub fn with_mount(mut self, source: &str, target: &str, fstype: &str) -> Self {
        self.mounts.push(MountEntry {
            source: source.into(),
            target: target.into(),
            fstype: fstype.into(),
            options: "rw".into(),
        });
        self
    }
}

fn not_found(op: &'static str, path: &Path) -> MountError {
    MountError::Io {
        op,
        path: path.to_owned(),
        source: std::io::ErrorKind::NotFound.into(),
    }
}

impl Mounts for FakeMounts {
    fn mounts(&mut self) -> Result<Vec<MountEntry>, MountError> {
        Ok(self.mounts.clone())
    }
    fn filesystems(&mut self) -> Result<Vec<String>, MountError> {
        Ok(self.filesystems.clone())
    }
    fn space(&mut self, path: &Path) -> Result<Space, MountError> {
        self.space.ok_or_else(|| not_found("statvfs", path))
    }
    fn file(&mut self, path: &Path) -> Result<Option<FileSize>, MountError> {
        Ok(self.files.get(path).copied())
    }
    fn make_dir(&mut self, dir: &Path) -> Result<bool, MountError> {
        if self.dirs.iter().any(|d| d == dir) {
            return Ok(false);
        }
        self.dirs.push(dir.to_owned());
        Ok(true)
    }
    fn remove_dir(&mut self, dir: &Path) -> Result<(), MountError> {
        let before = self.dirs.len();
        self.dirs.retain(|d| d != dir);
        if self.dirs.len() == before {
            return Err(not_found("rmdir", dir));
        }
        Ok(())
    }
    fn mount_image_ro(
        &mut self,
        image: &Path,
        target: &Path,
        fstype: &str,
        options: &str,
    ) -> Result<PathBuf, MountError> {
        if !self.files.contains_key(image) {
            return Err(not_found("open", image));
        }
        let device = format!("/dev/loop{}", 100 + self.loops.len());
        self.loops.insert(device.clone(), image.to_owned());
        self.mounts.push(MountEntry {
            source: device.clone(),
            target: target.to_owned(),
            fstype: fstype.into(),
            options: format!("ro,{options}"),
        });
        Ok(device.into())
    }
    fn mount_rw(&mut self, device: &Path, target: &Path, fstype: &str) -> Result<(), MountError> {
        if self.failing.contains(&"mount_rw") {
            return Err(MountError::Io {
                op: "mount",
                path: target.to_owned(),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        if !self.dirs.iter().any(|d| d == target) {
            return Err(not_found("mount", target));
        }
        self.mounts.push(MountEntry {
            source: device.display().to_string(),
            target: target.to_owned(),
            fstype: fstype.into(),
            options: "rw,nosuid,nodev".into(),
        });
        Ok(())
    }
    fn unmount(&mut self, target: &Path) -> Result<(), MountError> {
        let i = self
            .mounts
            .iter()
            .rposition(|m| m.target == target)
            .ok_or_else(|| not_found("umount", target))?;
        let m = self.mounts.remove(i);
        self.loops.remove(&m.source);
        Ok(())
    }
    fn loop_backing(&mut self, device: &str) -> Option<PathBuf> {
        self.loops.get(device).cloned()
    }
}
