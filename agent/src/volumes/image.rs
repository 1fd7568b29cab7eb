//! Image files of VFS volumes on the real system: inspect (size, allocation, file system
//! signature), create sparse, format with mkfs.
use std::{
    fs::{self, File, OpenOptions},
    os::unix::fs::{FileExt as _, MetadataExt as _},
    path::Path,
    process::Command,
};

use super::{ImageInfo, VolumeError};
use crate::config::FsType;

/// Where each file system keeps its magic number: (offset, bytes).
const SIGNATURES: &[(FsType, u64, &[u8])] = &[
    (FsType::Xfs, 0, b"XFSB"),
    // ext2/3/4: s_magic 0xEF53, little-endian, at 1024 + 56.
    (FsType::Ext4, 1080, &[0x53, 0xEF]),
    (FsType::Btrfs, 0x1_0040, b"_BHRfS_M"),
];

/// The file system whose superblock magic the start of an image (`read(offset, len)`) holds.
pub(super) fn signature(
    mut read: impl FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<Option<FsType>> {
    for (fs, offset, magic) in SIGNATURES {
        if read(*offset, magic.len())? == *magic {
            return Ok(Some(*fs));
        }
    }
    Ok(None)
}

fn io(volume: &str, op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let (volume, path) = (volume.to_owned(), path.to_owned());
    move |source| VolumeError::Io {
        volume,
        op,
        path,
        source,
    }
}

pub(super) fn inspect(volume: &str, image: &Path) -> Result<Option<ImageInfo>, VolumeError> {
    let meta = match fs::metadata(image) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(volume, "stat", image)(e)),
    };
    if !meta.is_file() {
        return Err(VolumeError::NotRegularFile {
            volume: volume.to_owned(),
            path: image.to_owned(),
        });
    }
    let file = File::open(image).map_err(io(volume, "open", image))?;
    let filesystem = signature(|offset, len| {
        let mut buf = vec![0u8; len];
        // Past the end of a small image reads short: no signature there.
        let n = file.read_at(&mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    })
    .map_err(io(volume, "read superblock of", image))?;
    Ok(Some(ImageInfo {
        size: meta.len(),
        allocated: meta.blocks() * 512,
        filesystem,
    }))
}

/// `statfs` magic numbers of the file systems that can hold a pool.
const XFS_MAGIC: i64 = 0x5846_5342;
const BTRFS_MAGIC: i64 = 0x9123_683E;

/// The name of a file system type that cannot hold a pool, by its `statfs` magic; `None` for XFS
/// and btrfs.
pub(super) fn not_reflink_capable(magic: i64) -> Option<String> {
    match magic {
        XFS_MAGIC | BTRFS_MAGIC => None,
        0xEF53 => Some("ext2/3/4".into()),
        0x0102_1994 => Some("tmpfs".into()),
        0x794C_7630 => Some("overlayfs".into()),
        other => Some(format!("a file system of type {other:#x}")),
    }
}

/// Checks that the nearest existing directory above `image` is on XFS or btrfs: images are never
/// created on the file system under an unmounted pool.
pub(super) fn check_pool(volume: &str, image: &Path) -> Result<(), VolumeError> {
    let Some(dir) = image.ancestors().skip(1).find(|d| d.is_dir()) else {
        return Ok(());
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| io(volume, "statfs", dir)(std::io::Error::other(e)))?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io(volume, "statfs", dir)(std::io::Error::last_os_error()));
    }
    #[allow(clippy::unnecessary_cast)]
    match not_reflink_capable(st.f_type as i64) {
        None => Ok(()),
        Some(found) => Err(VolumeError::NotReflinkCapable {
            volume: volume.to_owned(),
            path: dir.to_owned(),
            found,
        }),
    }
}

pub(super) fn create(volume: &str, image: &Path, size: u64) -> Result<(), VolumeError> {
    if let Some(dir) = image.parent() {
        fs::create_dir_all(dir).map_err(io(volume, "create directory", dir))?;
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(image)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => VolumeError::Exists {
                volume: volume.to_owned(),
                path: image.to_owned(),
            },
            _ => io(volume, "create", image)(e),
        })?;
    let sized = file.set_len(size).and_then(|()| file.sync_all());
    if let Err(e) = sized {
        let _ = fs::remove_file(image);
        return Err(io(volume, "set size of", image)(e));
    }
    Ok(())
}

/// The mkfs command for `filesystem` on `image`.
fn mkfs(filesystem: FsType, image: &Path) -> (&'static str, Command) {
    let (program, args): (&'static str, &[&str]) = match filesystem {
        // Reflink lets the cycles clone the volume's image and its files cheaply.
        FsType::Xfs => ("mkfs.xfs", &["-q", "-m", "reflink=1"]),
        FsType::Ext4 => ("mkfs.ext4", &["-q", "-F"]),
        FsType::Btrfs => ("mkfs.btrfs", &["-q"]),
    };
    let mut cmd = Command::new(program);
    cmd.args(args).arg(image);
    (program, cmd)
}

pub(super) fn format(volume: &str, image: &Path, filesystem: FsType) -> Result<(), VolumeError> {
    let (program, mut cmd) = mkfs(filesystem, image);
    let out = cmd.output().map_err(io(volume, "run mkfs for", image))?;
    if !out.status.success() {
        return Err(VolumeError::Format {
            volume: volume.to_owned(),
            program,
            path: image.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_from(bytes: &[u8]) -> impl FnMut(u64, usize) -> std::io::Result<Vec<u8>> + '_ {
        move |offset, len| {
            let start = (offset as usize).min(bytes.len());
            let end = (start + len).min(bytes.len());
            Ok(bytes[start..end].to_vec())
        }
    }

    #[test]
    fn signatures_are_found_at_their_offsets() {
        let mut image = vec![0u8; 0x1_0100];
        assert_eq!(signature(read_from(&image)).unwrap(), None);
        image[1080..1082].copy_from_slice(&[0x53, 0xEF]);
        assert_eq!(signature(read_from(&image)).unwrap(), Some(FsType::Ext4));
        image[0..4].copy_from_slice(b"XFSB");
        assert_eq!(signature(read_from(&image)).unwrap(), Some(FsType::Xfs));
        let mut btrfs = vec![0u8; 0x1_0100];
        btrfs[0x1_0040..0x1_0048].copy_from_slice(b"_BHRfS_M");
        assert_eq!(signature(read_from(&btrfs)).unwrap(), Some(FsType::Btrfs));
        // Short images hold no signature past their end.
        assert_eq!(signature(read_from(b"XF")).unwrap(), None);
    }

    #[test]
    fn pools_are_on_xfs_or_btrfs_only() {
        assert_eq!(not_reflink_capable(XFS_MAGIC), None);
        assert_eq!(not_reflink_capable(BTRFS_MAGIC), None);
        assert_eq!(not_reflink_capable(0xEF53).as_deref(), Some("ext2/3/4"));
        assert_eq!(not_reflink_capable(0x0102_1994).as_deref(), Some("tmpfs"));
    }

    #[test]
    fn xfs_is_made_with_reflink() {
        let (program, cmd) = mkfs(FsType::Xfs, Path::new("/p/v.img"));
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(program, "mkfs.xfs");
        assert_eq!(args, ["-q", "-m", "reflink=1", "/p/v.img"]);
    }

    #[test]
    fn a_sparse_image_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("volumes/fs1/data.img");
        create("fs1/data", &image, 1 << 30).unwrap();
        let info = inspect("fs1/data", &image).unwrap().unwrap();
        assert_eq!((info.size, info.filesystem), (1 << 30, None));
        assert!(info.allocated < 1 << 20, "{info:?}");
        assert!(matches!(
            create("fs1/data", &image, 1 << 30),
            Err(VolumeError::Exists { .. })
        ));
        assert_eq!(inspect("fs1/data", &dir.path().join("none")).unwrap(), None);
    }
}
