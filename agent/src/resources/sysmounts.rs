//! The real `Mounts`.
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use sys_mount::{Mount, MountFlags, UnmountFlags};

use super::mounts::{FileSize, MountEntry, MountError, Mounts, Space};
use crate::volumes::attach_loop;

#[derive(Debug, Default)]
pub struct SystemMounts;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MountError + 'a {
    move |source| MountError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Undoes the octal escapes of /proc/self/mountinfo (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses /proc/self/mountinfo.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 6 || r.len() < 2 {
            continue;
        }
        out.push(MountEntry {
            source: unescape(r[1]),
            target: PathBuf::from(unescape(l[4])),
            fstype: r[0].to_owned(),
            options: l[5].to_owned(),
        });
    }
    out
}

impl Mounts for SystemMounts {
    fn mounts(&mut self) -> Result<Vec<MountEntry>, MountError> {
        let path = Path::new("/proc/self/mountinfo");
        Ok(parse_mountinfo(
            &fs::read_to_string(path).map_err(io("read", path))?,
        ))
    }

    fn filesystems(&mut self) -> Result<Vec<String>, MountError> {
        let path = Path::new("/proc/filesystems");
        let text = fs::read_to_string(path).map_err(io("read", path))?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
            .collect())
    }

    fn space(&mut self, path: &Path) -> Result<Space, MountError> {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|e| io("statvfs", path)(std::io::Error::other(e)))?;
        // SAFETY: zeroed statvfs is a valid out-parameter.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid C string and out-pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io("statvfs", path)(std::io::Error::last_os_error()));
        }
        Ok(Space {
            free: st.f_bavail * st.f_frsize,
            total: st.f_blocks * st.f_frsize,
        })
    }

    fn file(&mut self, path: &Path) -> Result<Option<FileSize>, MountError> {
        match fs::metadata(path) {
            Ok(m) if m.is_file() => Ok(Some(FileSize {
                size: m.len(),
                allocated: m.blocks() * 512,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("stat", path)(e)),
        }
    }

    fn make_dir(&mut self, dir: &Path) -> Result<bool, MountError> {
        if dir.is_dir() {
            return Ok(false);
        }
        fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        Ok(true)
    }

    fn remove_dir(&mut self, dir: &Path) -> Result<(), MountError> {
        fs::remove_dir(dir).map_err(io("remove directory", dir))
    }

    fn mount_image_ro(
        &mut self,
        image: &Path,
        target: &Path,
        fstype: &str,
        options: &str,
    ) -> Result<PathBuf, MountError> {
        let name = target.display().to_string();
        let (device, hold) = attach_loop(&name, image, true)?;
        Mount::builder()
            .fstype(fstype)
            .flags(MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV)
            .data(options)
            .mount(&device, target)
            .map_err(io("mount", target))?;
        // The mount now holds the loop device; with autoclear it goes away at unmount.
        drop(hold);
        Ok(device)
    }

    fn mount_rw(&mut self, device: &Path, target: &Path, fstype: &str) -> Result<(), MountError> {
        Mount::builder()
            .fstype(fstype)
            .flags(MountFlags::NOSUID | MountFlags::NODEV)
            .mount(device, target)
            .map_err(io("mount", target))?;
        Ok(())
    }

    fn unmount(&mut self, target: &Path) -> Result<(), MountError> {
        sys_mount::unmount(target, UnmountFlags::empty()).map_err(io("unmount", target))
    }

    fn loop_backing(&mut self, device: &str) -> Option<PathBuf> {
        let name = device.strip_prefix("/dev/")?;
        let text = fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
        Some(PathBuf::from(text.trim_end_matches('\n')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 30 7:3 / /srv/vfsdr/mnt/fs1/data ro,nosuid,nodev shared:5 - xfs /dev/loop3 ro,nouuid,norecovery\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].target, Path::new("/mnt/with space"));
        assert_eq!(
            (m[1].source.as_str(), m[1].fstype.as_str()),
            ("/dev/loop3", "xfs")
        );
        assert_eq!(m[1].options, "ro,nosuid,nodev");
    }
}
