//! The real `BlockDevices`: stat for block devices, sysfs and loop ioctls for images.
use std::{
    fs::{self, File, OpenOptions},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::{FileTypeExt, MetadataExt},
    },
    path::{Path, PathBuf},
};

use super::{BlockDevices, DevId, Device, ImageInfo, VolumeError, image};
use crate::config::{FsType, VolumeSource};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const ATTACH_TRIES: u32 = 8;

/// `struct loop_info64` from `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Block devices and loop devices of this host.
#[derive(Debug, Default)]
pub struct SystemDevices;

fn io(volume: &str, op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let (volume, path) = (volume.to_owned(), path.to_owned());
    move |source| {
        if source.kind() == std::io::ErrorKind::NotFound && op == "stat" {
            VolumeError::NotFound { volume, path }
        } else {
            VolumeError::Io {
                volume,
                op,
                path,
                source,
            }
        }
    }
}

fn device_size(file: &File) -> std::io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

impl SystemDevices {
    fn block(&self, volume: &str, path: &Path) -> Result<Device, VolumeError> {
        let meta = fs::metadata(path).map_err(io(volume, "stat", path))?;
        if !meta.file_type().is_block_device() {
            return Err(VolumeError::NotBlockDevice {
                volume: volume.to_owned(),
                path: path.to_owned(),
            });
        }
        let file = File::open(path).map_err(io(volume, "open", path))?;
        let size = device_size(&file).map_err(io(volume, "BLKGETSIZE64", path))?;
        Ok(Device {
            path: path.to_owned(),
            dev: DevId::from_rdev(meta.rdev()),
            size,
            attached: false,
            hold: None,
        })
    }

    /// The loop device whose backing file is `image` (same inode), if any.
    fn find_loop(&self, image: &fs::Metadata) -> Option<PathBuf> {
        loops_backed_by(image).into_iter().next()
    }
}

/// The loop devices whose backing file is `image` (same inode), in device order.
fn loops_backed_by(image: &fs::Metadata) -> Vec<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str().filter(|n| n.starts_with("loop")) else {
                continue;
            };
            let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) else {
                continue;
            };
            let backing = backing.trim_end_matches('\n');
            if let Ok(m) = fs::metadata(backing)
                && m.dev() == image.dev()
                && m.ino() == image.ino()
            {
                let n = name[4..].parse().unwrap_or(u32::MAX);
                found.push((n, PathBuf::from("/dev").join(name)));
            }
        }
    }
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// Attaches `image` to a free loop device with autoclear (it detaches when its last user, the
/// returned descriptor or a mount, goes away). Read-only attaches refuse any write.
pub fn attach_loop(
    volume: &str,
    image: &Path,
    read_only: bool,
) -> Result<(PathBuf, OwnedFd), VolumeError> {
    {
        let backing = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(image)
            .map_err(io(volume, "open", image))?;
        let ctl_path = Path::new("/dev/loop-control");
        let ctl = File::open(ctl_path).map_err(io(volume, "open", ctl_path))?;
        for _ in 0..ATTACH_TRIES {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
            let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if n < 0 {
                return Err(io(volume, "LOOP_CTL_GET_FREE", ctl_path)(
                    std::io::Error::last_os_error(),
                ));
            }
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let dev = OpenOptions::new()
                .read(true)
                .write(!read_only)
                .open(&path)
                .map_err(io(volume, "open", &path))?;
            // SAFETY: an all-zero loop_config is valid; we set fd and flags.
            let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
            cfg.fd = backing.as_raw_fd() as u32;
            cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | if read_only { LO_FLAGS_READ_ONLY } else { 0 };
            let name = image.as_os_str().as_encoded_bytes();
            let len = name.len().min(63);
            cfg.info.lo_file_name[..len].copy_from_slice(&name[..len]);
            // SAFETY: LOOP_CONFIGURE reads one loop_config.
            let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg) };
            if r == 0 {
                return Ok((path, dev.into()));
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EBUSY) {
                return Err(io(volume, "LOOP_CONFIGURE", &path)(err));
            }
            // Someone else took this loop device between GET_FREE and CONFIGURE: retry.
        }
        Err(VolumeError::NoFreeLoop {
            volume: volume.to_owned(),
            path: image.to_owned(),
            tries: ATTACH_TRIES,
        })
    }
}

impl BlockDevices for SystemDevices {
    fn image_exists(&mut self, image: &Path) -> bool {
        image.is_file()
    }

    fn inspect_image(
        &mut self,
        volume: &str,
        image: &Path,
    ) -> Result<Option<ImageInfo>, VolumeError> {
        image::inspect(volume, image)
    }

    fn create_image(&mut self, volume: &str, image: &Path, size: u64) -> Result<(), VolumeError> {
        image::check_pool(volume, image)?;
        image::create(volume, image, size)
    }

    fn format(
        &mut self,
        volume: &str,
        image: &Path,
        filesystem: FsType,
    ) -> Result<(), VolumeError> {
        image::format(volume, image, filesystem)
    }

    fn loops_of(&mut self, image: &Path) -> Vec<PathBuf> {
        fs::metadata(image)
            .map(|m| loops_backed_by(&m))
            .unwrap_or_default()
    }

    fn attach(&mut self, volume: &str, image: &Path) -> Result<Device, VolumeError> {
        let (loop_path, hold) = attach_loop(volume, image, false)?;
        let mut device = self.block(volume, &loop_path)?;
        device.attached = true;
        device.hold = Some(hold);
        Ok(device)
    }

    fn detach(&mut self, volume: &str, device: &Path) -> Result<(), VolumeError> {
        let dev = match File::open(device) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(volume, "open", device)(e)),
        };
        // SAFETY: LOOP_CLR_FD takes no argument.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD) };
        if r < 0 {
            let err = std::io::Error::last_os_error();
            // ENXIO: nothing attached any more (autoclear got there first).
            if err.raw_os_error() != Some(libc::ENXIO) {
                return Err(io(volume, "LOOP_CLR_FD", device)(err));
            }
        }
        Ok(())
    }

    fn open(&mut self, volume: &str, source: &VolumeSource) -> Result<Device, VolumeError> {
        match source {
            VolumeSource::Device(path) => self.block(volume, path),
            VolumeSource::Image(image) => {
                let meta = fs::metadata(image).map_err(io(volume, "stat", image))?;
                if !meta.file_type().is_file() {
                    return Err(VolumeError::NotRegularFile {
                        volume: volume.to_owned(),
                        path: image.clone(),
                    });
                }
                if let Some(loop_path) = self.find_loop(&meta) {
                    return self.block(volume, &loop_path);
                }
                let (loop_path, hold) = attach_loop(volume, image, false)?;
                let mut device = self.block(volume, &loop_path)?;
                device.attached = true;
                device.hold = Some(hold);
                tracing::info!(volume, event = "loop_attached", device = %loop_path.display(), image = %image.display(), "attached image to a loop device");
                Ok(device)
            }
        }
    }
}
