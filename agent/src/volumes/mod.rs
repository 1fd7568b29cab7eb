//! Volumes: the block devices the agent watches, either named directly or as image files
//! attached to loop devices. `BlockDevices` is the seam in front of the kernel (stat, loop
//! ioctls); `SystemDevices` is the real one, `FakeDevices` the one for tests.
mod loopdev;

use std::{
    collections::HashMap,
    fmt,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

pub use loopdev::{SystemDevices, attach_loop};

use crate::config::VolumeSource;

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
}

/// The kernel surface for volumes.
pub trait BlockDevices: Send {
    /// Opens the block device of `source`: a block device as it is, an image through the loop
    /// device it is attached to, attaching one (read-write, autoclear) if none is.
    fn open(&mut self, volume: &str, source: &VolumeSource) -> Result<Device, VolumeError>;
    /// Whether an image file exists (a VFS volume not created yet is not tracked).
    fn image_exists(&mut self, image: &Path) -> bool;
}

/// Devices for tests: a table from path to device number. An image not yet "attached" gets
/// the next free fake loop device.
#[derive(Debug, Default)]
pub struct FakeDevices {
    pub devices: HashMap<PathBuf, DevId>,
    pub images: HashMap<PathBuf, DevId>,
    /// Images that exist on "disk".
    pub files: Vec<PathBuf>,
    next_loop: u32,
}

impl FakeDevices {
    pub fn with_device(mut self, path: impl Into<PathBuf>, dev: DevId) -> Self {
        self.devices.insert(path.into(), dev);
        self
    }
    pub fn with_image(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(path.into());
        self
    }
}

impl BlockDevices for FakeDevices {
    fn image_exists(&mut self, image: &Path) -> bool {
        self.files.iter().any(|f| f == image)
    }

    fn open(&mut self, volume: &str, source: &VolumeSource) -> Result<Device, VolumeError> {
        let not_found = |path: &Path| VolumeError::NotFound {
            volume: volume.to_owned(),
            path: path.to_owned(),
        };
        match source {
            VolumeSource::Device(path) => {
                let dev = *self.devices.get(path).ok_or_else(|| not_found(path))?;
                Ok(Device {
                    path: path.clone(),
                    dev,
                    size: 1 << 30,
                    attached: false,
                    hold: None,
                })
            }
            VolumeSource::Image(path) => {
                if !self.files.contains(path) {
                    return Err(not_found(path));
                }
                let (dev, attached) = match self.images.get(path) {
                    Some(dev) => (*dev, false),
                    None => {
                        let dev = DevId::new(7, self.next_loop);
                        self.next_loop += 1;
                        self.images.insert(path.clone(), dev);
                        (dev, true)
                    }
                };
                Ok(Device {
                    path: PathBuf::from(format!("/dev/loop{}", dev.minor)),
                    dev,
                    size: 1 << 30,
                    attached,
                    hold: None,
                })
            }
        }
    }
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

    #[test]
    fn fake_images_attach_once() {
        let mut f = FakeDevices::default().with_image("/pool/a.img");
        let src = VolumeSource::Image("/pool/a.img".into());
        let first = f.open("a", &src).unwrap();
        let again = f.open("a", &src).unwrap();
        assert!(first.attached && !again.attached);
        assert_eq!(first.dev, again.dev);
        assert!(matches!(
            f.open("b", &VolumeSource::Image("/pool/b.img".into())),
            Err(VolumeError::NotFound { .. })
        ));
    }
}
