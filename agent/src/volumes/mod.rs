//! Volumes: the block devices the agent watches, either named directly or as image files
//! attached to loop devices, and the life cycle of a VFS's volume images at its active site
//! (create, format, attach, mount; unmount, detach). `BlockDevices` is the seam in front of the
//! kernel (stat, loop ioctls, file system signatures, mkfs); `SystemDevices` is the real one,
//! `FakeDevices` the one for tests.
mod fake;
mod image;
pub mod lifecycle;
mod loopdev;

use std::{
    fmt,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

pub use fake::FakeDevices;
pub use loopdev::{SystemDevices, attach_loop};

use crate::config::{FsType, VolumeSource};

/// A device number as the kernel's block tracepoints report it (`MAJOR << 20 | MINOR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevId {
    pub major: u32,
    pub minor: u32,
}

impl DevId {
    pub const fn new(major: u32, minor: u32) -> Self {
        DevId { major, minor }
    }
    /// The kernel-internal encoding used by the block tracepoints.
    pub const fn kernel(self) -> u32 {
        (self.major << 20) | (self.minor & 0xf_ffff)
    }
    pub const fn from_kernel(dev: u32) -> Self {
        DevId {
            major: dev >> 20,
            minor: dev & 0xf_ffff,
        }
    }
    /// From a userspace `st_rdev`.
    pub fn from_rdev(rdev: u64) -> Self {
        DevId {
            major: libc::major(rdev),
            minor: libc::minor(rdev),
        }
    }
}

impl fmt::Display for DevId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// An opened volume device. If the agent attached the loop device itself, dropping this
/// detaches it (autoclear) once nobody else holds it.
#[derive(Debug)]
pub struct Device {
    /// The block device (`/dev/vdb`, `/dev/loop3`).
    pub path: PathBuf,
    pub dev: DevId,
    /// Size in bytes.
    pub size: u64,
    /// True when the agent attached the loop device for an image itself.
    pub attached: bool,
    /// Keeps an attached loop device alive while the agent runs.
    pub(crate) hold: Option<OwnedFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume}: {path} does not exist")]
    NotFound { volume: String, path: PathBuf },
    #[error("volume {volume}: {path} is not a block device")]
    NotBlockDevice { volume: String, path: PathBuf },
    #[error("volume {volume}: image {path} is not a regular file")]
    NotRegularFile { volume: String, path: PathBuf },
    #[error("volume {volume}: {op} {path}: {source}")]
    Io {
        volume: String,
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("volume {volume}: no free loop device for {path} after {tries} tries")]
    NoFreeLoop {
        volume: String,
        path: PathBuf,
        tries: u32,
    },
    #[error(
        "volume {volume}: {path} is on {found}, not on a reflink-capable file system (XFS, \
         btrfs); is the pool mounted? No image is created there"
    )]
    NotReflinkCapable {
        volume: String,
        path: PathBuf,
        found: String,
    },
    #[error("volume {volume}: image {path} already exists")]
    Exists { volume: String, path: PathBuf },
    #[error("volume {volume}: {program} {path} failed ({status}): {stderr}")]
    Format {
        volume: String,
        program: &'static str,
        path: PathBuf,
        status: String,
        stderr: String,
    },
}

/// What an image file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Apparent size in bytes.
    pub size: u64,
    /// Bytes allocated on disk (0 for a sparse file nothing was written to).
    pub allocated: u64,
    /// The file system whose signature (superblock magic) it carries, if any.
    pub filesystem: Option<FsType>,
}

/// The kernel surface for volumes.
pub trait BlockDevices: Send {
    /// Opens the block device of `source`: a block device as it is, an image through the loop
    /// device it is attached to, attaching one (read-write, autoclear) if none is.
    fn open(&mut self, volume: &str, source: &VolumeSource) -> Result<Device, VolumeError>;
    /// Whether an image file exists (a VFS volume not created yet is not tracked).
    fn image_exists(&mut self, image: &Path) -> bool;
    /// Size, allocation and file system signature of an image; `None` if there is no such file.
    fn inspect_image(
        &mut self,
        volume: &str,
        image: &Path,
    ) -> Result<Option<ImageInfo>, VolumeError>;
    /// Creates a sparse image of `size` bytes (and its directory); an existing file is an error,
    /// and so is a directory that is not on XFS or btrfs (a pool that is not mounted).
    fn create_image(&mut self, volume: &str, image: &Path, size: u64) -> Result<(), VolumeError>;
    /// Makes a file system on an image (XFS with reflink), which the caller checked is blank.
    fn format(&mut self, volume: &str, image: &Path, filesystem: FsType)
    -> Result<(), VolumeError>;
    /// The loop devices backed by `image` (same inode), in device order.
    fn loops_of(&mut self, image: &Path) -> Vec<PathBuf>;
    /// Attaches `image` read-write to a new loop device with autoclear; the returned device
    /// holds it until dropped (a mount made meanwhile keeps it after).
    fn attach(&mut self, volume: &str, image: &Path) -> Result<Device, VolumeError>;
    /// Detaches a loop device (the kernel defers it while the device is in use).
    fn detach(&mut self, volume: &str, device: &Path) -> Result<(), VolumeError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_encoding_round_trips() {
        let d = DevId::new(7, 3);
        assert_eq!(d.kernel(), (7 << 20) | 3);
        assert_eq!(DevId::from_kernel(d.kernel()), d);
        assert_eq!(
            DevId::from_rdev(libc::makedev(259, 1_048_000)),
            DevId::new(259, 1_048_000)
        );
        assert_eq!(d.to_string(), "7:3");
    }
}
