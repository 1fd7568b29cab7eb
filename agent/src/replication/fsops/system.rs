//! The real [`Images`]: syscalls and ioctls through `libc`.
use std::{
    fs::{self, File, OpenOptions},
    io,
    os::{
        fd::AsRawFd as _,
        unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use super::{
    Extent, FICLONE, FICLONERANGE, FIFREEZE, FITHAW, FS_IOC_FIEMAP, FsError, Images, flags, grace,
};

const FIEMAP_FLAG_SYNC: u32 = 0x1;
/// Extents asked for per FIEMAP call.
const FIEMAP_BATCH: usize = 512;

/// `struct fiemap` without its flexible array.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapHeader {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
}

/// `struct fiemap_extent`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

/// `struct fiemap` with room for a batch of extents.
#[repr(C)]
struct FiemapBuf {
    header: FiemapHeader,
    extents: [FiemapExtent; FIEMAP_BATCH],
}

const _: () = assert!(size_of::<FiemapHeader>() == 32 && size_of::<FiemapExtent>() == 56);

/// How many open files [`SystemImages`] keeps.
const HANDLE_CACHE: usize = 16;

/// The real [`Images`]. Keeps a few open files for positioned I/O (forgotten on `remove` and
/// `rename`, and reopened when their path names another file by then), and the directories of the mount points it froze, which it thaws when dropped if
/// [`Images::thaw_all`] was not called (a panic between freeze and thaw must not leave volumes
/// frozen).
#[derive(Debug, Default)]
pub struct SystemImages {
    /// Most recently used last.
    handles: Vec<Handle>,
    frozen: Vec<(PathBuf, File)>,
    /// Files are only ever opened `O_RDONLY` (see [`SystemImages::read_only`]).
    read_only: bool,
}

#[derive(Debug)]
struct Handle {
    path: PathBuf,
    file: File,
    writable: bool,
    /// (st_dev, st_ino) when opened: a path now naming another file is opened afresh.
    id: (u64, u64),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn to_off(op: &'static str, path: &Path, value: u64) -> Result<libc::off_t, FsError> {
    libc::off_t::try_from(value).map_err(|_| FsError::Io {
        op,
        path: path.to_owned(),
        source: io::Error::from_raw_os_error(libc::EFBIG),
    })
}

/// Creates the directory a new file goes into (clones, replicas, snapshots are laid out in
/// per-VFS, per-cycle directories).
fn make_parent(file: &Path) -> Result<(), FsError> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            fs::create_dir_all(dir).map_err(io_err("create directory", dir))
        }
        _ => Ok(()),
    }
}

/// ioctl with an int argument (FIFREEZE and FITHAW ignore it; FICLONE takes the source fd).
fn ioctl_int(file: &File, request: libc::c_ulong, arg: libc::c_int) -> io::Result<()> {
    // SAFETY: the fd is open, and these requests take a plain int argument.
    if unsafe { libc::ioctl(file.as_raw_fd(), request, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn open_dir(path: &Path) -> Result<File, FsError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err("open", path))
}

/// FITHAW; a file system that is not frozen (EINVAL) counts as thawed.
fn thaw(dir: &File, mount: &Path) -> Result<(), FsError> {
    match ioctl_int(dir, FITHAW, 0) {
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => Err(io_err("FITHAW", mount)(e)),
        _ => Ok(()),
    }
}

/// Reflinks `src` into the new file `dst` (same mode, directory created), not synced; `dst` is
/// removed again on failure.
fn reflink(src: &Path, dst: &Path) -> Result<(), FsError> {
    make_parent(dst)?;
    let source = File::open(src).map_err(io_err("open", src))?;
    let mode = source
        .metadata()
        .map_err(io_err("stat", src))?
        .permissions()
        .mode()
        & 0o7777;
    let target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_CLOEXEC)
        .open(dst)
        .map_err(io_err("create", dst))?;
    let done = target
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", dst))
        .and_then(|()| {
            ioctl_int(&target, FICLONE, source.as_raw_fd()).map_err(io_err("FICLONE", dst))
        });
    if done.is_err() {
        drop(target);
        let _ = fs::remove_file(dst);
    }
    done
}

impl SystemImages {
    pub fn new() -> Self {
        Self::default()
    }

    /// Images that are only read: every file is opened `O_RDONLY`, and writing through one
    /// fails (`vfsdr verify` reads snapshots this way, never opening them for writing).
    pub fn read_only() -> Self {
        SystemImages {
            handles: Vec::new(),
            frozen: Vec::new(),
            read_only: true,
        }
    }

    /// An open handle of `path`, writable if asked (else read-write if allowed, read-only if not).
    fn handle(&mut self, path: &Path, write: bool) -> Result<&File, FsError> {
        if let Some(i) = self.handles.iter().position(|h| h.path == path) {
            let h = self.handles.remove(i);
            // Still the same file (not replaced or removed behind our back)?
            let same = fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == h.id);
            if same && (h.writable || !write) {
                self.handles.push(h);
                return Ok(&self.handles[self.handles.len() - 1].file);
            }
        }
        if self.read_only && write {
            return Err(io_err("open for writing", path)(io::Error::from(
                io::ErrorKind::PermissionDenied,
            )));
        }
        let rw = OpenOptions::new()
            .read(true)
            .write(!self.read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(path);
        let (file, writable) = match rw {
            Ok(f) => (f, !self.read_only),
            Err(e) if write => return Err(io_err("open", path)(e)),
            Err(_) => (File::open(path).map_err(io_err("open", path))?, false),
        };
        let m = file.metadata().map_err(io_err("stat", path))?;
        if self.handles.len() >= HANDLE_CACHE {
            self.handles.remove(0);
        }
        self.handles.push(Handle {
            path: path.to_owned(),
            file,
            writable,
            id: (m.dev(), m.ino()),
        });
        Ok(&self.handles[self.handles.len() - 1].file)
    }

    fn forget(&mut self, path: &Path) {
        self.handles.retain(|h| h.path != path);
    }

    fn lseek(
        &mut self,
        file: &Path,
        from: u64,
        whence: libc::c_int,
    ) -> Result<Option<u64>, FsError> {
        let op = if whence == libc::SEEK_DATA {
            "lseek SEEK_DATA"
        } else {
            "lseek SEEK_HOLE"
        };
        let at = to_off(op, file, from)?;
        let fd = self.handle(file, false)?.as_raw_fd();
        // SAFETY: the fd is open; lseek only moves its offset (positioned I/O ignores it).
        let r = unsafe { libc::lseek(fd, at, whence) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(io_err(op, file)(e));
        }
        Ok(Some(r as u64))
    }
}

impl Drop for SystemImages {
    fn drop(&mut self) {
        for (mount, dir) in self.frozen.drain(..) {
            match thaw(&dir, &mount) {
                Ok(()) => {
                    tracing::warn!(mount = %mount.display(), "thawed a file system left frozen")
                }
                Err(e) => tracing::error!(error = %e, "cannot thaw a file system left frozen"),
            }
        }
    }
}

impl Images for SystemImages {
    fn flush(&mut self, mount: &Path, image: &Path) -> Result<(), FsError> {
        let dir = open_dir(mount)?;
        // SAFETY: the fd is open.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } < 0 {
            return Err(io_err("syncfs", mount)(io::Error::last_os_error()));
        }
        self.handle(image, false)?
            .sync_all()
            .map_err(io_err("fsync", image))
    }

    fn freeze_all(&mut self, mounts: &[PathBuf]) -> Result<Duration, FsError> {
        // Opened before the clock starts: the window is the ioctls only.
        let dirs = mounts
            .iter()
            .map(|m| open_dir(m))
            .collect::<Result<Vec<_>, _>>()?;
        // Normal RCU grace periods make most of a freeze under load (`grace`).
        let expedited = grace::system().raise();
        let start = Instant::now();
        let results: Vec<Result<(), FsError>> = thread::scope(|s| {
            let workers: Vec<_> = mounts
                .iter()
                .zip(&dirs)
                .map(|(mount, dir)| {
                    thread::Builder::new()
                        .name("vfsdr-freeze".into())
                        .spawn_scoped(s, move || {
                            ioctl_int(dir, FIFREEZE, 0).map_err(io_err("FIFREEZE", mount))
                        })
                })
                .collect();
            workers
                .into_iter()
                .zip(mounts)
                .map(|(worker, mount)| {
                    let thread_failed = || FsError::Thread {
                        op: "FIFREEZE",
                        path: mount.clone(),
                    };
                    match worker {
                        Ok(w) => w.join().unwrap_or_else(|_| Err(thread_failed())),
                        Err(_) => Err(thread_failed()),
                    }
                })
                .collect()
        });
        let took = start.elapsed();
        drop(expedited);
        let mut first_error = None;
        let mut frozen = Vec::new();
        for ((result, mount), dir) in results.into_iter().zip(mounts).zip(dirs) {
            match result {
                Ok(()) => frozen.push((mount.clone(), dir)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            for (mount, dir) in frozen {
                if let Err(t) = thaw(&dir, &mount) {
                    tracing::error!(error = %t, "cannot thaw after a failed group freeze");
                }
            }
            return Err(e);
        }
        self.frozen.extend(frozen);
        Ok(took)
    }

    fn thaw_all(&mut self, mounts: &[PathBuf]) -> Result<(), FsError> {
        let mut first_error = None;
        for mount in mounts {
            let dir = match self.frozen.iter().position(|(m, _)| m == mount) {
                Some(i) => Ok(self.frozen.swap_remove(i).1),
                None => open_dir(mount),
            };
            if let Err(e) = dir.and_then(|d| thaw(&d, mount)) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn clone_range(
        &mut self,
        src: &Path,
        dst: &Path,
        offset: u64,
        len: u64,
    ) -> Result<(), FsError> {
        /// `struct file_clone_range` of `linux/fs.h`.
        #[repr(C)]
        struct FileCloneRange {
            src_fd: i64,
            src_offset: u64,
            src_length: u64,
            dest_offset: u64,
        }
        let source = self.handle(src, false)?.as_raw_fd();
        let target = self.handle(dst, true)?.as_raw_fd();
        let arg = FileCloneRange {
            src_fd: i64::from(source),
            src_offset: offset,
            src_length: len,
            dest_offset: offset,
        };
        // SAFETY: both fds are open; the argument is a `struct file_clone_range`.
        if unsafe { libc::ioctl(target, FICLONERANGE, &arg) } < 0 {
            return Err(io_err("FICLONERANGE", dst)(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn clone_file(&mut self, src: &Path, dst: &Path) -> Result<(), FsError> {
        self.clone_unsynced(src, dst)?;
        let synced = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(dst)
            .and_then(|f| f.sync_all())
            .map_err(io_err("fsync", dst));
        if synced.is_err() {
            let _ = fs::remove_file(dst);
        }
        synced
    }

    fn clone_unsynced(&mut self, src: &Path, dst: &Path) -> Result<(), FsError> {
        self.forget(dst);
        reflink(src, dst)
    }

    fn clone_all_unsynced(&mut self, pairs: &[(&Path, &Path)]) -> Vec<Result<(), FsError>> {
        if pairs.len() < 2 {
            return pairs
                .iter()
                .map(|(s, d)| self.clone_unsynced(s, d))
                .collect();
        }
        for (_, dst) in pairs {
            self.forget(dst);
        }
        thread::scope(|s| {
            let workers: Vec<_> = pairs
                .iter()
                .map(|&(src, dst)| {
                    thread::Builder::new()
                        .name("vfsdr-clone".into())
                        .spawn_scoped(s, move || reflink(src, dst))
                })
                .collect();
            workers
                .into_iter()
                .zip(pairs)
                .map(|(worker, (_, dst))| {
                    let failed = || FsError::Thread {
                        op: "FICLONE",
                        path: dst.to_path_buf(),
                    };
                    match worker {
                        Ok(w) => w.join().unwrap_or_else(|_| Err(failed())),
                        Err(_) => Err(failed()),
                    }
                })
                .collect()
        })
    }

    fn extents(&mut self, file: &Path) -> Result<Vec<Extent>, FsError> {
        let fd = self.handle(file, false)?.as_raw_fd();
        let mut buf = Box::new(FiemapBuf {
            header: FiemapHeader::default(),
            extents: [FiemapExtent::default(); FIEMAP_BATCH],
        });
        let mut out: Vec<Extent> = Vec::new();
        let mut start = 0u64;
        loop {
            buf.header = FiemapHeader {
                fm_start: start,
                fm_length: u64::MAX - start,
                fm_flags: FIEMAP_FLAG_SYNC,
                fm_extent_count: FIEMAP_BATCH as u32,
                ..FiemapHeader::default()
            };
            // SAFETY: the fd is open and `buf` is a `struct fiemap` with room for
            // `fm_extent_count` extents.
            if unsafe { libc::ioctl(fd, FS_IOC_FIEMAP, &mut *buf as *mut FiemapBuf) } < 0 {
                return Err(io_err("FIEMAP", file)(io::Error::last_os_error()));
            }
            let mapped = (buf.header.fm_mapped_extents as usize).min(FIEMAP_BATCH);
            let mut last = mapped == 0;
            for fe in &buf.extents[..mapped] {
                last |= fe.fe_flags & flags::LAST != 0;
                // An extent reaching back before `start` was reported already.
                let skip = start.saturating_sub(fe.fe_logical).min(fe.fe_length);
                if fe.fe_length > skip {
                    out.push(Extent {
                        logical: fe.fe_logical + skip,
                        physical: fe.fe_physical.wrapping_add(skip),
                        length: fe.fe_length - skip,
                        flags: fe.fe_flags,
                    });
                }
            }
            let next = out.last().map_or(start, Extent::end);
            if last || next <= start {
                return Ok(out);
            }
            start = next;
        }
    }

    fn data_ranges(&mut self, file: &Path) -> Result<Vec<(u64, u64)>, FsError> {
        let size = self.size(file)?;
        let mut out = Vec::new();
        let mut at = 0;
        while at < size {
            let Some(data) = self.lseek(file, at, libc::SEEK_DATA)? else {
                break;
            };
            let hole = self
                .lseek(file, data, libc::SEEK_HOLE)?
                .unwrap_or(size)
                .min(size);
            if hole <= data {
                break;
            }
            out.push((data, hole - data));
            at = hole;
        }
        Ok(out)
    }

    fn size(&mut self, file: &Path) -> Result<u64, FsError> {
        Ok(fs::metadata(file).map_err(io_err("stat", file))?.len())
    }

    fn read_at(&mut self, file: &Path, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        self.handle(file, false)?
            .read_exact_at(buf, offset)
            .map_err(io_err("pread", file))
    }

    fn write_at(&mut self, file: &Path, offset: u64, data: &[u8]) -> Result<(), FsError> {
        self.handle(file, true)?
            .write_all_at(data, offset)
            .map_err(io_err("pwrite", file))
    }

    fn punch(&mut self, file: &Path, offset: u64, len: u64) -> Result<(), FsError> {
        if len == 0 {
            return Ok(());
        }
        const OP: &str = "fallocate PUNCH_HOLE";
        let (at, n) = (to_off(OP, file, offset)?, to_off(OP, file, len)?);
        let fd = self.handle(file, true)?.as_raw_fd();
        // SAFETY: the fd is open.
        let r = unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                at,
                n,
            )
        };
        if r < 0 {
            return Err(io_err(OP, file)(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn prefetch(&mut self, file: &Path, offset: u64, len: u64) -> Result<(), FsError> {
        const OP: &str = "posix_fadvise WILLNEED";
        let (at, n) = (to_off(OP, file, offset)?, to_off(OP, file, len)?);
        let fd = self.handle(file, false)?.as_raw_fd();
        // SAFETY: the fd is open; the advice only schedules reads into the page cache.
        let r = unsafe { libc::posix_fadvise(fd, at, n, libc::POSIX_FADV_WILLNEED) };
        if r != 0 {
            return Err(io_err(OP, file)(io::Error::from_raw_os_error(r)));
        }
        Ok(())
    }

    fn start_writeback(&mut self, file: &Path) -> Result<(), FsError> {
        const OP: &str = "sync_file_range WRITE";
        let fd = self.handle(file, false)?.as_raw_fd();
        // SAFETY: the fd is open; offset 0 and length 0 name the whole file.
        if unsafe { libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE) } < 0 {
            return Err(io_err(OP, file)(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn fsync(&mut self, file: &Path) -> Result<(), FsError> {
        if file.is_dir() {
            return open_dir(file)?.sync_all().map_err(io_err("fsync", file));
        }
        self.handle(file, false)?
            .sync_all()
            .map_err(io_err("fsync", file))
    }

    fn create_sparse(&mut self, file: &Path, size: u64) -> Result<(), FsError> {
        self.forget(file);
        make_parent(file)?;
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(file)
            .map_err(io_err("create", file))?;
        if let Err(e) = f.set_len(size) {
            drop(f);
            let _ = fs::remove_file(file);
            return Err(io_err("ftruncate", file)(e));
        }
        Ok(())
    }

    fn remove(&mut self, file: &Path) -> Result<(), FsError> {
        self.forget(file);
        match fs::remove_file(file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("unlink", file)(e)),
            _ => Ok(()),
        }
    }

    fn remove_dir(&mut self, dir: &Path) -> Result<(), FsError> {
        match fs::remove_dir(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("rmdir", dir)(e)),
            _ => Ok(()),
        }
    }

    fn rename(&mut self, from: &Path, to: &Path) -> Result<(), FsError> {
        self.forget(from);
        self.forget(to);
        fs::rename(from, to).map_err(|source| FsError::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
            source,
        })?;
        let parent = |p: &Path| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let (a, b) = (parent(to), parent(from));
        self.fsync(&a)?;
        if a != b {
            self.fsync(&b)?;
        }
        Ok(())
    }

    fn free_space(&mut self, dir: &Path) -> Result<u64, FsError> {
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| {
            FsError::Io {
                op: "statvfs",
                path: dir.to_owned(),
                source: io::ErrorKind::InvalidInput.into(),
            }
        })?;
        // SAFETY: statvfs fills the zeroed struct it is given; the path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io_err("statvfs", dir)(io::Error::last_os_error()));
        }
        Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }

    fn exists(&mut self, file: &Path) -> bool {
        fs::symlink_metadata(file).is_ok()
    }
}
