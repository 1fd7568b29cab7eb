//! [`FakeImages`]: [`Images`] in memory, for tests of replication without root or XFS.
//!
//! Files are sparse maps of 4 KiB blocks onto simulated physical blocks, which behave like a
//! reflink-capable XFS: a clone shares the physical blocks of its source (reference counted); a
//! write to a shared block (or to a hole) allocates a new physical block (copy on write), a write
//! to an unshared block overwrites it in place; a punch deallocates whole blocks and zeroes the
//! partial ones; freed physical blocks are handed out again, lowest first. [`Images::extents`]
//! reports them as FIEMAP does: sorted, physically contiguous blocks merged (optionally cut at
//! [`FakeImages::set_max_extent_blocks`]), `UNWRITTEN` for preallocated blocks, `SHARED` for
//! shared ones and `LAST` on the last extent.
//!
//! Mounts are registered with [`FakeImages::add_volume`]; freezes and thaws are tracked per mount
//! point (freezing a frozen one fails with EBUSY, thawing a thawed one is fine, as in the kernel),
//! and [`FakeImages::write_user`] (a user writing to a volume) fails with [`FsError::Frozen`] while
//! its mount is frozen, so tests can check the order of a cycle. Every call is logged
//! ([`FakeImages::calls`]), and [`FakeImages::fail_next`] makes the next call of an operation fail.
//!
//! `FakeImages` is a handle: clones share the same state, so a test can keep one and give another
//! to the code under test.
mod disk;

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use self::disk::{Disk, FakeFile, Slot};
use super::fsops::{Extent, FsError, Images, flags};

/// The fake's block size (and allocation unit).
pub const BLOCK: u64 = 4096;
const B: usize = BLOCK as usize;

/// The operations of [`Images`], and user writes, for [`FakeImages::fail_next`] and the call log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Flush,
    Freeze,
    Thaw,
    Clone,
    Extents,
    DataRanges,
    Size,
    Read,
    Write,
    Punch,
    Fsync,
    CreateSparse,
    Remove,
    Rename,
    /// The read-ahead hint ([`Images::prefetch`]).
    Prefetch,
    /// The writeback hint ([`Images::start_writeback`]).
    Writeback,
    /// [`FakeImages::write_user`].
    UserWrite,
    CloneRange,
}

impl Op {
    /// The call the real implementation names in its errors.
    pub fn syscall(self) -> &'static str {
        match self {
            Op::Flush => "syncfs",
            Op::Freeze => "FIFREEZE",
            Op::Thaw => "FITHAW",
            Op::Clone => "FICLONE",
            Op::Extents => "FIEMAP",
            Op::DataRanges => "lseek SEEK_DATA",
            Op::Size => "stat",
            Op::Read => "pread",
            Op::Write => "pwrite",
            Op::Punch => "fallocate PUNCH_HOLE",
            Op::Fsync => "fsync",
            Op::CreateSparse => "create",
            Op::Remove => "unlink",
            Op::Rename => "rename",
            Op::Prefetch => "posix_fadvise WILLNEED",
            Op::Writeback => "sync_file_range WRITE",
            Op::UserWrite => "write",
            Op::CloneRange => "FICLONERANGE",
        }
    }
}

/// One logged call: the operation and the path it was made on (the mount point for flush,
/// freeze and thaw; the source for clone and rename).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub op: Op,
    pub path: PathBuf,
}

#[derive(Clone, Debug)]
struct Failure {
    op: Op,
    path: Option<PathBuf>,
    errno: i32,
}

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<PathBuf, FakeFile>,
    disk: Disk,
    /// Mount point -> (image, frozen).
    mounts: BTreeMap<PathBuf, (PathBuf, bool)>,
    failures: Vec<Failure>,
    calls: Vec<Call>,
    freeze_time: Duration,
    /// User writes that land just before the next freeze (after a point's early clones).
    before_freeze: Vec<(PathBuf, u64, Vec<u8>)>,
    max_extent_blocks: Option<u64>,
    /// What `free_space` reports (unlimited unless set).
    free_space: Option<u64>,
}

fn errno(op: &'static str, path: &Path, errno: i32) -> FsError {
    FsError::Io {
        op,
        path: path.to_owned(),
        source: io::Error::from_raw_os_error(errno),
    }
}

impl State {
    /// Logs the call; fails if a failure was injected for it.
    fn begin(&mut self, op: Op, path: &Path) -> Result<(), FsError> {
        self.calls.push(Call {
            op,
            path: path.to_owned(),
        });
        let hit = self
            .failures
            .iter()
            .position(|f| f.op == op && f.path.as_deref().is_none_or(|p| p == path));
        match hit {
            Some(i) => Err(errno(op.syscall(), path, self.failures.remove(i).errno)),
            None => Ok(()),
        }
    }

    fn file(&mut self, path: &Path) -> Result<&mut FakeFile, FsError> {
        self.files
            .get_mut(path)
            .ok_or_else(|| errno("open", path, libc::ENOENT))
    }

    fn write(&mut self, path: &Path, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| errno("pwrite", path, libc::EFBIG))?;
        self.file(path)?;
        let mut at = offset;
        while at < end {
            let (index, within) = (at / BLOCK, (at % BLOCK) as usize);
            let n = (B - within).min((end - at) as usize);
            let src = &data[(at - offset) as usize..][..n];
            self.write_block(path, index, within, src);
            at += n as u64;
        }
        let f = self.file(path)?;
        f.size = f.size.max(end);
        Ok(())
    }

    /// Writes `src` at `within` into block `index` of `path` (which exists), copy on write.
    fn write_block(&mut self, path: &Path, index: u64, within: usize, src: &[u8]) {
        let old = self.files[path].blocks.get(&index).copied();
        let slot = match old {
            Some(s) if self.disk.refs(s.physical) == 1 => {
                let mut content = self.disk.content(s);
                content[within..within + src.len()].copy_from_slice(src);
                self.disk.blocks.insert(s.physical, (1, content));
                s.physical
            }
            _ => {
                let mut content = old.map_or_else(|| Box::new([0; B]), |s| self.disk.content(s));
                content[within..within + src.len()].copy_from_slice(src);
                if let Some(s) = old {
                    self.disk.release(s.physical);
                }
                self.disk.alloc(content)
            }
        };
        let slot = Slot {
            physical: slot,
            unwritten: false,
        };
        if let Some(f) = self.files.get_mut(path) {
            f.blocks.insert(index, slot);
        }
    }

    fn punch(&mut self, path: &Path, offset: u64, len: u64) -> Result<(), FsError> {
        self.file(path)?;
        let end = offset.saturating_add(len);
        let mut at = offset;
        while at < end {
            let index = at / BLOCK;
            let (from, to) = (at % BLOCK, (end - index * BLOCK).min(BLOCK));
            let slot = self.files[path].blocks.get(&index).copied();
            match slot {
                Some(s) if from == 0 && to == BLOCK => {
                    if let Some(f) = self.files.get_mut(path) {
                        f.blocks.remove(&index);
                    }
                    self.disk.release(s.physical);
                }
                // Partial blocks are zeroed (unless they read as zeros already).
                Some(s) if !s.unwritten => {
                    let zeros = vec![0; (to - from) as usize];
                    self.write_block(path, index, from as usize, &zeros);
                }
                _ => {}
            }
            at = index * BLOCK + to;
        }
        Ok(())
    }

    fn remove_file(&mut self, path: &Path) {
        if let Some(f) = self.files.remove(path) {
            for s in f.blocks.values() {
                self.disk.release(s.physical);
            }
        }
    }
}

/// In-memory [`Images`]; see the module documentation.
#[derive(Clone, Debug, Default)]
pub struct FakeImages {
    state: Arc<Mutex<State>>,
}

impl FakeImages {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a volume: the sparse image `image` of `size` bytes (created if missing),
    /// mounted at `mount`.
    pub fn add_volume(&self, mount: &Path, image: &Path, size: u64) {
        let mut s = self.lock();
        s.files.entry(image.to_owned()).or_insert(FakeFile {
            size,
            blocks: BTreeMap::new(),
        });
        s.mounts.insert(mount.to_owned(), (image.to_owned(), false));
    }

    /// A user of the volume whose image is `image` writes `data` at `offset` (through its file
    /// system, so into the image); fails with [`FsError::Frozen`] while that volume is frozen.
    pub fn write_user(&self, image: &Path, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let mut s = self.lock();
        s.begin(Op::UserWrite, image)?;
        let frozen = s.mounts.iter().find(|(_, (i, f))| i == image && *f);
        if let Some((mount, _)) = frozen {
            return Err(FsError::Frozen {
                path: image.to_owned(),
                mount: mount.clone(),
            });
        }
        s.write(image, offset, data)
    }

    /// Preallocates `[offset, offset+len)` like fallocate(2) mode 0: holes become unwritten
    /// blocks (reading as zeros), the size grows to cover the range.
    pub fn preallocate(&self, file: &Path, offset: u64, len: u64) -> Result<(), FsError> {
        let mut s = self.lock();
        s.file(file)?;
        let end = offset.saturating_add(len);
        for index in offset / BLOCK..end.div_ceil(BLOCK) {
            if !s.files[file].blocks.contains_key(&index) {
                let physical = s.disk.alloc(Box::new([0; B]));
                let slot = Slot {
                    physical,
                    unwritten: true,
                };
                s.file(file)?.blocks.insert(index, slot);
            }
        }
        let f = s.file(file)?;
        f.size = f.size.max(end);
        Ok(())
    }

    /// Makes the next call of `op` fail with EIO.
    pub fn fail_next(&self, op: Op) {
        self.fail_next_with(op, None, libc::EIO);
    }

    /// Makes the next call of `op` on `path` (a mount point for flush, freeze and thaw) fail with
    /// `errno`; with no path, the next call on any path.
    pub fn fail_next_with(&self, op: Op, path: Option<&Path>, errno: i32) {
        self.lock().failures.push(Failure {
            op,
            path: path.map(Path::to_owned),
            errno,
        });
    }

    /// What `freeze_all` reports as the time its freeze calls took.
    /// A user write of `data` at `offset` of `image` that lands just before the next freeze.
    pub fn write_before_freeze(&self, image: &Path, offset: u64, data: &[u8]) {
        self.lock()
            .before_freeze
            .push((image.to_owned(), offset, data.to_vec()));
    }

    pub fn set_freeze_time(&self, took: Duration) {
        self.lock().freeze_time = took;
    }

    /// Cuts reported extents after this many blocks (as file systems cut long extents).
    pub fn set_max_extent_blocks(&self, blocks: Option<u64>) {
        self.lock().max_extent_blocks = blocks.map(|b| b.max(1));
    }

    /// What [`Images::free_space`] reports from now on (`None`: unlimited).
    pub fn set_free_space(&self, bytes: Option<u64>) {
        self.lock().free_space = bytes;
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The mount points frozen now.
    pub fn frozen(&self) -> Vec<PathBuf> {
        let s = self.lock();
        s.mounts
            .iter()
            .filter(|(_, (_, f))| *f)
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// The files that exist, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        self.lock().files.keys().cloned().collect()
    }

    /// The whole content of `file` (holes and unwritten blocks read as zeros).
    pub fn content(&self, file: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        let f = s.files.get(file)?;
        let mut out = vec![0; f.size as usize];
        for (&index, &slot) in f.blocks.range(..f.size.div_ceil(BLOCK)) {
            let at = (index * BLOCK) as usize;
            let n = B.min(out.len() - at);
            out[at..at + n].copy_from_slice(&s.disk.content(slot)[..n]);
        }
        Some(out)
    }

    /// Physical blocks in use by all files together.
    pub fn physical_blocks(&self) -> usize {
        self.lock().disk.blocks.len()
    }
}

impl Images for FakeImages {
    fn flush(&mut self, mount: &Path, image: &Path) -> Result<(), FsError> {
        let mut s = self.lock();
        s.begin(Op::Flush, mount)?;
        if !s.mounts.contains_key(mount) {
            return Err(errno("open", mount, libc::ENOENT));
        }
        s.file(image).map(drop)
    }

    fn freeze_all(&mut self, mounts: &[PathBuf]) -> Result<Duration, FsError> {
        let mut s = self.lock();
        for (image, offset, data) in std::mem::take(&mut s.before_freeze) {
            s.write(&image, offset, &data)?;
        }
        let mut done: Vec<&PathBuf> = Vec::new();
        let mut result = Ok(s.freeze_time);
        for m in mounts {
            let r = s
                .begin(Op::Freeze, m)
                .and_then(|()| match s.mounts.get_mut(m) {
                    None => Err(errno("open", m, libc::ENOENT)),
                    Some((_, true)) => Err(errno("FIFREEZE", m, libc::EBUSY)),
                    Some((_, frozen)) => {
                        *frozen = true;
                        Ok(())
                    }
                });
            match r {
                Ok(()) => done.push(m),
                Err(e) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
        }
        if result.is_err() {
            for m in done {
                if let Some((_, frozen)) = s.mounts.get_mut(m) {
                    *frozen = false;
                }
            }
        }
        result
    }

    fn thaw_all(&mut self, mounts: &[PathBuf]) -> Result<(), FsError> {
        let mut s = self.lock();
        let mut result = Ok(());
        for m in mounts {
            let r = s
                .begin(Op::Thaw, m)
                .and_then(|()| match s.mounts.get_mut(m) {
                    None => Err(errno("open", m, libc::ENOENT)),
                    Some((_, frozen)) => {
                        *frozen = false;
                        Ok(())
                    }
                });
            if let Err(e) = r {
                result = result.and(Err(e));
            }
        }
        result
    }

    fn clone_file(&mut self, src: &Path, dst: &Path) -> Result<(), FsError> {
        let mut s = self.lock();
        s.begin(Op::Clone, src)?;
        let file = s.file(src)?.clone();
        if s.files.contains_key(dst) {
            return Err(errno("create", dst, libc::EEXIST));
        }
        for slot in file.blocks.values() {
            s.disk.share(slot.physical);
        }
        s.files.insert(dst.to_owned(), file);
        Ok(())
    }

    fn clone_range(
        &mut self,
        src: &Path,
        dst: &Path,
        offset: u64,
        len: u64,
    ) -> Result<(), FsError> {
        let mut s = self.lock();
        s.begin(Op::CloneRange, dst)?;
        let from = s.file(src)?.clone();
        s.file(dst)?;
        let end = offset.saturating_add(len);
        if !offset.is_multiple_of(BLOCK)
            || (!end.is_multiple_of(BLOCK) && end != from.size)
            || end > from.size
        {
            return Err(errno("FICLONERANGE", dst, libc::EINVAL));
        }
        for index in offset / BLOCK..end.div_ceil(BLOCK) {
            let State { files, disk, .. } = &mut *s;
            let Some(to) = files.get_mut(dst) else { break };
            if let Some(old) = to.blocks.remove(&index) {
                disk.release(old.physical);
            }
            if let Some(&slot) = from.blocks.get(&index) {
                disk.share(slot.physical);
                to.blocks.insert(index, slot);
            }
        }
        Ok(())
    }

    fn extents(&mut self, file: &Path) -> Result<Vec<Extent>, FsError> {
        let mut s = self.lock();
        s.begin(Op::Extents, file)?;
        let max = s.max_extent_blocks.unwrap_or(u64::MAX);
        s.file(file)?;
        let State { files, disk, .. } = &*s;
        let mut out: Vec<Extent> = Vec::new();
        for (&index, &slot) in &files[file].blocks {
            let mut flags = 0;
            if slot.unwritten {
                flags |= flags::UNWRITTEN;
            }
            if disk.refs(slot.physical) > 1 {
                flags |= flags::SHARED;
            }
            let (logical, physical) = (index * BLOCK, slot.physical * BLOCK);
            match out.last_mut() {
                Some(e)
                    if e.end() == logical
                        && e.physical + e.length == physical
                        && e.flags == flags
                        && e.length / BLOCK < max =>
                {
                    e.length += BLOCK
                }
                _ => out.push(Extent {
                    logical,
                    physical,
                    length: BLOCK,
                    flags,
                }),
            }
        }
        if let Some(e) = out.last_mut() {
            e.flags |= flags::LAST;
        }
        Ok(out)
    }

    fn data_ranges(&mut self, file: &Path) -> Result<Vec<(u64, u64)>, FsError> {
        let mut s = self.lock();
        s.begin(Op::DataRanges, file)?;
        let f = s.file(file)?;
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (&index, _) in f.blocks.iter().filter(|(_, s)| !s.unwritten) {
            let (at, end) = (index * BLOCK, ((index + 1) * BLOCK).min(f.size));
            if at >= end {
                break;
            }
            match out.last_mut() {
                Some(r) if r.0 + r.1 == at => r.1 = end - r.0,
                _ => out.push((at, end - at)),
            }
        }
        Ok(out)
    }

    fn size(&mut self, file: &Path) -> Result<u64, FsError> {
        let mut s = self.lock();
        s.begin(Op::Size, file)?;
        s.file(file)
            .map(|f| f.size)
            .map_err(|_| errno("stat", file, libc::ENOENT))
    }

    fn read_at(&mut self, file: &Path, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        let mut s = self.lock();
        s.begin(Op::Read, file)?;
        s.file(file)?;
        let State { files, disk, .. } = &*s;
        let f = &files[file];
        if offset.saturating_add(buf.len() as u64) > f.size {
            return Err(FsError::Io {
                op: "pread",
                path: file.to_owned(),
                source: io::ErrorKind::UnexpectedEof.into(),
            });
        }
        let mut at = offset;
        for chunk in buf.chunks_mut(B) {
            // Chunks may straddle two blocks; copy piecewise.
            let mut done = 0;
            while done < chunk.len() {
                let (index, within) = (at / BLOCK, (at % BLOCK) as usize);
                let n = (B - within).min(chunk.len() - done);
                match f.blocks.get(&index) {
                    Some(&slot) => chunk[done..done + n]
                        .copy_from_slice(&disk.content(slot)[within..within + n]),
                    None => chunk[done..done + n].fill(0),
                }
                done += n;
                at += n as u64;
            }
        }
        Ok(())
    }

    fn write_at(&mut self, file: &Path, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let mut s = self.lock();
        s.begin(Op::Write, file)?;
        s.write(file, offset, data)
    }

    fn punch(&mut self, file: &Path, offset: u64, len: u64) -> Result<(), FsError> {
        let mut s = self.lock();
        s.begin(Op::Punch, file)?;
        s.punch(file, offset, len)
    }

    fn prefetch(&mut self, file: &Path, offset: u64, len: u64) -> Result<(), FsError> {
        let mut s = self.lock();
        s.begin(Op::Prefetch, file)?;
        let size = s.file(file)?.size;
        if offset.saturating_add(len) > size {
            return Err(errno("posix_fadvise WILLNEED", file, libc::EINVAL));
        }
        Ok(())
    }

    fn start_writeback(&mut self, file: &Path) -> Result<(), FsError> {
        let mut s = self.lock();
        s.begin(Op::Writeback, file)?;
        s.file(file).map(drop)
    }

    fn fsync(&mut self, file: &Path) -> Result<(), FsError> {
        let mut s = self.lock();
        s.begin(Op::Fsync, file)?;
        let is_dir = s.files.keys().any(|f| f.parent() == Some(file));
        if is_dir {
            Ok(())
        } else {
            s.file(file).map(drop)
        }
    }

    fn create_sparse(&mut self, file: &Path, size: u64) -> Result<(), FsError> {
        let mut s = self.lock();
        s.begin(Op::CreateSparse, file)?;
        if s.files.contains_key(file) {
            return Err(errno("create", file, libc::EEXIST));
        }
        s.files.insert(
            file.to_owned(),
            FakeFile {
                size,
                blocks: BTreeMap::new(),
            },
        );
        Ok(())
    }

    fn remove_dir(&mut self, _dir: &Path) -> Result<(), FsError> {
        // The fake keeps files only: directories come and go with them.
        Ok(())
    }

    fn remove(&mut self, file: &Path) -> Result<(), FsError> {
        let mut s = self.lock();
        s.begin(Op::Remove, file)?;
        s.remove_file(file);
        Ok(())
    }

    fn rename(&mut self, from: &Path, to: &Path) -> Result<(), FsError> {
        let mut s = self.lock();
        s.begin(Op::Rename, from)?;
        if !s.files.contains_key(from) {
            return Err(FsError::Rename {
                from: from.to_owned(),
                to: to.to_owned(),
                source: io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        if from != to {
            s.remove_file(to);
            let f = s.files.remove(from).unwrap_or_default();
            s.files.insert(to.to_owned(), f);
        }
        Ok(())
    }

    fn exists(&mut self, file: &Path) -> bool {
        self.lock().files.contains_key(file)
    }

    fn free_space(&mut self, _dir: &Path) -> Result<u64, FsError> {
        Ok(self.lock().free_space.unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests;
