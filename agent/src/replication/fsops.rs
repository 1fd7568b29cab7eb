//! The file-system seam of replication: pre-flush, group freeze and thaw, reflink clones, FIEMAP
//! extents, and the positioned I/O the DR site applies changes with. [`SystemImages`] is the real
//! one (ioctls through `libc`, in `fsops/system.rs`); `super::fake_fs::FakeImages` the one for
//! tests.
//!
//! # ioctl numbers
//! `_IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr`, with `_IOW` dir 1
//! (write) and `_IOWR` dir 3 (read | write) on x86-64 and arm64 (the generic `asm-generic/ioctl.h`
//! layout):
//!
//! | ioctl | definition | value |
//! |---|---|---|
//! | `FIFREEZE` | `_IOWR('X', 119, int)` | `3 << 30 \| 4 << 16 \| 0x58 << 8 \| 0x77` = `0xC004_5877` |
//! | `FITHAW` | `_IOWR('X', 120, int)` | `0xC004_5878` |
//! | `FICLONE` | `_IOW(0x94, 9, int)` | `1 << 30 \| 4 << 16 \| 0x94 << 8 \| 9` = `0x4004_9409` |
//! | `FICLONERANGE` | `_IOW(0x94, 13, struct file_clone_range)` | `1 << 30 \| 32 << 16 \| 0x94 << 8 \| 13` = `0x4020_940D` |
//! | `FS_IOC_FIEMAP` | `_IOWR('f', 11, struct fiemap)` | `3 << 30 \| 32 << 16 \| 0x66 << 8 \| 11` = `0xC020_660B` |
//!
//! `struct fiemap` is 32 bytes (`fm_start`, `fm_length`: u64; `fm_flags`, `fm_mapped_extents`,
//! `fm_extent_count`, `fm_reserved`: u32) followed by `fm_extent_count` `struct fiemap_extent`s of
//! 56 bytes (`fe_logical`, `fe_physical`, `fe_length`, `fe_reserved64[2]`: u64; `fe_flags`,
//! `fe_reserved[3]`: u32), from `linux/fiemap.h`.
pub mod grace;
mod system;

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use system::SystemImages;

/// One FIEMAP extent (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub flags: u32,
}

impl Extent {
    /// The first logical byte after the extent.
    pub fn end(&self) -> u64 {
        self.logical.saturating_add(self.length)
    }
}

/// `fe_flags` of `linux/fiemap.h`.
pub mod flags {
    /// The last extent of the file.
    pub const LAST: u32 = 0x1;
    /// Data location unknown.
    pub const UNKNOWN: u32 = 0x2;
    /// Location still pending (delayed allocation); sets UNKNOWN.
    pub const DELALLOC: u32 = 0x4;
    /// Data cannot be read while the file system is unmounted (compressed, ...).
    pub const ENCODED: u32 = 0x8;
    /// Data is encrypted by the file system; sets ENCODED.
    pub const DATA_ENCRYPTED: u32 = 0x80;
    /// Extent offsets may not be block aligned.
    pub const NOT_ALIGNED: u32 = 0x100;
    /// Data mixed with metadata; sets NOT_ALIGNED.
    pub const DATA_INLINE: u32 = 0x200;
    /// Multiple files in the block; sets NOT_ALIGNED.
    pub const DATA_TAIL: u32 = 0x400;
    /// Space allocated, but no data (reads as zeros).
    pub const UNWRITTEN: u32 = 0x800;
    /// File does not natively support extents; the result was merged for efficiency.
    pub const MERGED: u32 = 0x1000;
    /// Space shared with other files (reflinks, snapshots).
    pub const SHARED: u32 = 0x2000;
    /// Flags that make `fe_physical` meaningless for comparing two files.
    pub const OPAQUE: u32 =
        UNKNOWN | DELALLOC | ENCODED | DATA_ENCRYPTED | NOT_ALIGNED | DATA_INLINE | DATA_TAIL;
}

/// What went wrong, naming the call that failed and the path it was made on.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// e.g. `FIFREEZE /srv/x: Device or resource busy`.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("rename {from} -> {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    /// A worker thread (one per mount point in a group freeze) could not run or panicked.
    #[error("{op} {path}: worker thread failed")]
    Thread { op: &'static str, path: PathBuf },
    /// A user write to a volume whose file system is frozen (only the fake reports this: the
    /// kernel blocks such writes until the thaw).
    #[error("write {path}: {mount} is frozen")]
    Frozen { path: PathBuf, mount: PathBuf },
}

impl FsError {
    /// The errno of the failed call, if the kernel gave one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            FsError::Io { source, .. } | FsError::Rename { source, .. } => source.raw_os_error(),
            FsError::Thread { .. } | FsError::Frozen { .. } => None,
        }
    }
}

/// The kernel surface of replication, for the volume images of a VFS (source site) and for the
/// replicas and snapshots (DR site). Offsets and lengths are bytes.
pub trait Images: Send {
    /// Pre-flush: syncfs(2) on the file system mounted at `mount`, then fsync of `image` (the
    /// loop's backing file), so the freeze that follows has little left to write.
    fn flush(&mut self, mount: &Path, image: &Path) -> Result<(), FsError>;
    /// Freezes every mount point in parallel (FIFREEZE, one thread each); if any fails, thaws
    /// those frozen and returns the first error (in the order of `mounts`). Returns how long the
    /// freeze calls took. A file system that is already frozen fails with EBUSY.
    fn freeze_all(&mut self, mounts: &[PathBuf]) -> Result<Duration, FsError>;
    /// Thaws every mount point (FITHAW; all are attempted; the first error is returned). A mount
    /// point that is not frozen is fine (idempotent, so it also serves recovery after a crash).
    fn thaw_all(&mut self, mounts: &[PathBuf]) -> Result<(), FsError>;
    /// Reflinks `src` into the new file `dst` (O_CREAT|O_EXCL, same mode; its directory is
    /// created if missing), FICLONE, then fsync of dst. On failure `dst` is removed again,
    /// unless it existed before.
    fn clone_file(&mut self, src: &Path, dst: &Path) -> Result<(), FsError>;
    /// [`Images::clone_file`] without the fsync of `dst` (the caller fsyncs it later, e.g.
    /// once the file systems are thawed: the freeze window then holds the FICLONE only).
    fn clone_unsynced(&mut self, src: &Path, dst: &Path) -> Result<(), FsError> {
        self.clone_file(src, dst)
    }
    /// [`Images::clone_unsynced`] of each `(src, dst)` pair (in parallel where the real kernel
    /// allows: one thread each); every pair is attempted, results in the order of `pairs`.
    fn clone_all_unsynced(&mut self, pairs: &[(&Path, &Path)]) -> Vec<Result<(), FsError>> {
        pairs
            .iter()
            .map(|(src, dst)| self.clone_unsynced(src, dst))
            .collect()
    }
    /// Reflinks `len` bytes of `src` at `offset` over the same range of the existing file `dst`
    /// (FICLONERANGE): `dst` then reads there what `src` reads. `offset` and `len` are multiples
    /// of 4 KiB, except that the range may end at the end of `src`.
    fn clone_range(&mut self, src: &Path, dst: &Path, offset: u64, len: u64)
    -> Result<(), FsError>;
    /// All FIEMAP extents of `file`, sorted by logical offset (FIEMAP_FLAG_SYNC first).
    fn extents(&mut self, file: &Path) -> Result<Vec<Extent>, FsError>;
    /// Allocated ranges (offset, len) by SEEK_DATA/SEEK_HOLE (for the initial full sync).
    fn data_ranges(&mut self, file: &Path) -> Result<Vec<(u64, u64)>, FsError>;
    fn size(&mut self, file: &Path) -> Result<u64, FsError>;
    /// Fills `buf` from `offset`; reading past the end of the file is an error.
    fn read_at(&mut self, file: &Path, offset: u64, buf: &mut [u8]) -> Result<(), FsError>;
    /// Writes all of `data` at `offset` (extending the file if needed).
    fn write_at(&mut self, file: &Path, offset: u64, data: &[u8]) -> Result<(), FsError>;
    /// Makes [offset, offset+len) read as zeros, deallocating it (fallocate
    /// PUNCH_HOLE|KEEP_SIZE). `len` 0 does nothing.
    fn punch(&mut self, file: &Path, offset: u64, len: u64) -> Result<(), FsError>;
    /// A hint that [offset, offset+len) of `file` is read soon (posix_fadvise WILLNEED: the
    /// kernel starts reading it in the background). Changes nothing a read sees.
    fn prefetch(&mut self, _file: &Path, _offset: u64, _len: u64) -> Result<(), FsError> {
        Ok(())
    }
    /// Starts writing the dirty pages of `file` back without waiting for them
    /// (sync_file_range WRITE), so a later fsync has less left to do. No durability promise.
    fn start_writeback(&mut self, _file: &Path) -> Result<(), FsError> {
        Ok(())
    }
    /// fsync of a file or a directory.
    fn fsync(&mut self, file: &Path) -> Result<(), FsError>;
    /// Creates the new (O_EXCL) sparse file `file` of `size` bytes, mode 0600 (its directory is
    /// created if missing). Not synced.
    fn create_sparse(&mut self, file: &Path, size: u64) -> Result<(), FsError>;
    /// Removes `file`; a missing file is fine.
    fn remove(&mut self, file: &Path) -> Result<(), FsError>;
    /// Removes the empty directory `dir`; a missing one is fine.
    fn remove_dir(&mut self, dir: &Path) -> Result<(), FsError>;
    /// Renames `from` to `to` (replacing it), then fsyncs the parent directory (of both, if
    /// they differ).
    fn rename(&mut self, from: &Path, to: &Path) -> Result<(), FsError>;
    fn exists(&mut self, file: &Path) -> bool;
    /// Bytes an unprivileged writer may still allocate in the file system holding `dir`
    /// (statvfs: `f_bavail * f_frsize`).
    fn free_space(&mut self, dir: &Path) -> Result<u64, FsError>;
}

/// `_IOC` of `asm-generic/ioctl.h`.
const fn ioc(dir: u64, kind: u64, nr: u64, size: u64) -> libc::c_ulong {
    ((dir << 30) | (size << 16) | (kind << 8) | nr) as libc::c_ulong
}
const IOC_WRITE: u64 = 1;
const IOC_READ_WRITE: u64 = 3;
const INT: u64 = size_of::<libc::c_int>() as u64;
/// `_IOWR('X', 119, int)` = 0xC0045877.
pub const FIFREEZE: libc::c_ulong = ioc(IOC_READ_WRITE, b'X' as u64, 119, INT);
/// `_IOWR('X', 120, int)` = 0xC0045878.
pub const FITHAW: libc::c_ulong = ioc(IOC_READ_WRITE, b'X' as u64, 120, INT);
/// `_IOW(0x94, 9, int)` = 0x40049409.
pub const FICLONE: libc::c_ulong = ioc(IOC_WRITE, 0x94, 9, INT);
/// `_IOW(0x94, 13, struct file_clone_range)` = 0x4020940D (`struct file_clone_range` is
/// `s64 src_fd; u64 src_offset, src_length, dest_offset`: 32 bytes).
pub const FICLONERANGE: libc::c_ulong = ioc(IOC_WRITE, 0x94, 13, 32);
/// `_IOWR('f', 11, struct fiemap)` = 0xC020660B (`sizeof(struct fiemap)` is 32, checked where the
/// struct is defined).
pub const FS_IOC_FIEMAP: libc::c_ulong = ioc(IOC_READ_WRITE, b'f' as u64, 11, 32);

#[cfg(test)]
mod tests;
