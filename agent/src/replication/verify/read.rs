//! The read-only side of verify: a file is opened `O_RDONLY` ([`ReadOnlyFile`]), or read
//! through the `Images` seam in tests ([`ViaImages`]).
use std::{
    fs::File,
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use crate::replication::fsops::{FsError, Images};

/// A file read for verification (never written).
pub trait ReadOnly: Send {
    fn size(&mut self) -> Result<u64, FsError>;
    /// Allocated ranges (offset, len), sorted (SEEK_DATA/SEEK_HOLE).
    fn data_ranges(&mut self) -> Result<Vec<(u64, u64)>, FsError>;
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FsError>;
}

/// A file opened `O_RDONLY`.
pub struct ReadOnlyFile {
    path: PathBuf,
    file: File,
}

impl ReadOnlyFile {
    pub fn open(path: &Path) -> Result<Self, FsError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| FsError::Io {
                op: "open",
                path: path.to_owned(),
                source,
            })?;
        Ok(ReadOnlyFile {
            path: path.to_owned(),
            file,
        })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> FsError + '_ {
        move |source| FsError::Io {
            op,
            path: self.path.clone(),
            source,
        }
    }

    fn seek(&self, from: u64, whence: libc::c_int) -> Result<Option<u64>, FsError> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: the fd is open; lseek only moves its offset (positioned reads ignore it).
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), from as libc::off_t, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(self.err("lseek")(e));
        }
        Ok(Some(r as u64))
    }
}

impl ReadOnly for ReadOnlyFile {
    fn size(&mut self) -> Result<u64, FsError> {
        Ok(self.file.metadata().map_err(self.err("stat"))?.len())
    }

    fn data_ranges(&mut self) -> Result<Vec<(u64, u64)>, FsError> {
        let size = self.size()?;
        let mut out = Vec::new();
        let mut at = 0;
        while at < size {
            let Some(data) = self.seek(at, libc::SEEK_DATA)? else {
                break;
            };
            let hole = self.seek(data, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
            if hole <= data {
                break;
            }
            out.push((data, hole - data));
            at = hole;
        }
        Ok(out)
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(self.err("pread"))
    }
}

/// A file read through the `Images` seam (for tests with `FakeImages`, a handle).
pub struct ViaImages<I: Images> {
    pub images: I,
    pub path: PathBuf,
}

impl<I: Images> ReadOnly for ViaImages<I> {
    fn size(&mut self) -> Result<u64, FsError> {
        self.images.size(&self.path)
    }
    fn data_ranges(&mut self) -> Result<Vec<(u64, u64)>, FsError> {
        self.images.data_ranges(&self.path)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        self.images.read_at(&self.path, offset, buf)
    }
}
