//! `FakeDevices`: block devices, images and loop devices in memory, for tests.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use super::{BlockDevices, DevId, Device, ImageInfo, VolumeError};
use crate::config::{FsType, VolumeSource};

/// Devices for tests: a table from path to device number. An image not yet "attached" gets
/// the next free fake loop device (`/dev/loopN`, device 7:N).
#[derive(Debug, Default)]
pub struct FakeDevices {
    pub devices: HashMap<PathBuf, DevId>,
    /// Images attached to a loop device.
    pub images: HashMap<PathBuf, DevId>,
    /// Images that exist on "disk".
    pub files: Vec<PathBuf>,
    /// What the images hold; an image in `files` without an entry is a 1 GiB XFS.
    pub contents: BTreeMap<PathBuf, ImageInfo>,
    /// Every call that changed something, in order: `create PATH`, `format PATH xfs`,
    /// `attach PATH`, `detach DEVICE`.
    pub log: Vec<String>,
    /// Operations that fail (`create`, `format`, `attach`, `detach`).
    pub failing: Vec<&'static str>,
    next_loop: u32,
}

const DEFAULT_IMAGE: ImageInfo = ImageInfo {
    size: 1 << 30,
    allocated: 1 << 20,
    filesystem: Some(FsType::Xfs),
};

impl FakeDevices {
    pub fn with_device(mut self, path: impl Into<PathBuf>, dev: DevId) -> Self {
        self.devices.insert(path.into(), dev);
        self
    }
    pub fn with_image(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.push(path.into());
        self
    }
    /// An image holding `info`.
    pub fn with_image_holding(mut self, path: impl Into<PathBuf>, info: ImageInfo) -> Self {
        let path = path.into();
        self.contents.insert(path.clone(), info);
        self.files.push(path);
        self
    }
    /// Attaches `path` (which must exist) to the next loop device, as if done earlier.
    pub fn with_attached(mut self, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let dev = self.next_dev();
        self.images.insert(path, dev);
        self
    }
    fn next_dev(&mut self) -> DevId {
        let dev = DevId::new(7, self.next_loop);
        self.next_loop += 1;
        dev
    }
    fn fail(&self, op: &'static str, volume: &str, path: &Path) -> Result<(), VolumeError> {
        if self.failing.contains(&op) {
            return Err(VolumeError::Io {
                volume: volume.to_owned(),
                op,
                path: path.to_owned(),
                source: std::io::Error::other("injected failure"),
            });
        }
        Ok(())
    }
    fn loop_device(dev: DevId) -> Device {
        Device {
            path: PathBuf::from(format!("/dev/loop{}", dev.minor)),
            dev,
            size: 1 << 30,
            attached: false,
            hold: None,
        }
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
                        let dev = self.next_dev();
                        self.images.insert(path.clone(), dev);
                        (dev, true)
                    }
                };
                let mut device = Self::loop_device(dev);
                device.attached = attached;
                Ok(device)
            }
        }
    }

    fn inspect_image(
        &mut self,
        _volume: &str,
        image: &Path,
    ) -> Result<Option<ImageInfo>, VolumeError> {
        if !self.image_exists(image) {
            return Ok(None);
        }
        Ok(Some(
            self.contents.get(image).copied().unwrap_or(DEFAULT_IMAGE),
        ))
    }

    fn create_image(&mut self, volume: &str, image: &Path, size: u64) -> Result<(), VolumeError> {
        self.fail("create", volume, image)?;
        if self.image_exists(image) {
            return Err(VolumeError::Exists {
                volume: volume.to_owned(),
                path: image.to_owned(),
            });
        }
        self.files.push(image.to_owned());
        let info = ImageInfo {
            size,
            allocated: 0,
            filesystem: None,
        };
        self.contents.insert(image.to_owned(), info);
        self.log.push(format!("create {}", image.display()));
        Ok(())
    }

    fn format(
        &mut self,
        volume: &str,
        image: &Path,
        filesystem: FsType,
    ) -> Result<(), VolumeError> {
        self.fail("format", volume, image)?;
        let info = self.contents.get_mut(image).ok_or(VolumeError::NotFound {
            volume: volume.to_owned(),
            path: image.to_owned(),
        })?;
        info.filesystem = Some(filesystem);
        info.allocated = info.allocated.max(16 << 20);
        let fs = filesystem.kernel_name();
        self.log.push(format!("format {} {fs}", image.display()));
        Ok(())
    }

    fn loops_of(&mut self, image: &Path) -> Vec<PathBuf> {
        let mut found: Vec<DevId> = self.images.get(image).copied().into_iter().collect();
        found.sort();
        found
            .into_iter()
            .map(|d| Self::loop_device(d).path)
            .collect()
    }

    fn attach(&mut self, volume: &str, image: &Path) -> Result<Device, VolumeError> {
        self.fail("attach", volume, image)?;
        if !self.image_exists(image) {
            return Err(VolumeError::NotFound {
                volume: volume.to_owned(),
                path: image.to_owned(),
            });
        }
        let dev = self.next_dev();
        self.images.insert(image.to_owned(), dev);
        self.log.push(format!("attach {}", image.display()));
        let mut device = Self::loop_device(dev);
        device.attached = true;
        Ok(device)
    }

    fn detach(&mut self, volume: &str, device: &Path) -> Result<(), VolumeError> {
        self.fail("detach", volume, device)?;
        let minor = device
            .to_str()
            .and_then(|d| d.strip_prefix("/dev/loop"))
            .and_then(|n| n.parse::<u32>().ok());
        self.images
            .retain(|_, dev| Some(dev.minor) != minor || dev.major != 7);
        self.log.push(format!("detach {}", device.display()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
